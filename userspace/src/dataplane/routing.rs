//! Policy routing over netlink: packets carrying the steering mark are looked up in our
//! table, whose only route delivers everything locally, where sk_lookup picks the proxy.
//!
//! `ip rule add fwmark 0x80000000/0x80000000 lookup T pref P` and
//! `ip route add local default dev lo table T`, for IPv4 and IPv6.

use std::net::{Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use portcullis_common::MARK_STEER;
use rtnetlink::{
    packet_route::{
        route::{RouteScope, RouteType},
        rule::{RuleAction, RuleAttribute, RuleMessage},
        AddressFamily,
    },
    Handle, IpVersion, RouteMessageBuilder,
};

use super::{preflight::ifindex, DataplaneError};
use crate::config::DataplaneConfig;

fn nl(what: &str) -> impl FnOnce(rtnetlink::Error) -> DataplaneError + '_ {
    move |source| DataplaneError::Netlink { what: what.to_string(), source }
}

fn connect() -> Result<Handle, DataplaneError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| DataplaneError::io("open a netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

fn is_ours(r: &RuleMessage, cfg: &DataplaneConfig) -> bool {
    let mut mark = false;
    let mut prio = false;
    let mut table = r.header.table as u32 == cfg.route_table;
    for a in &r.attributes {
        match a {
            RuleAttribute::FwMark(m) if *m == MARK_STEER => mark = true,
            RuleAttribute::Priority(p) if *p == cfg.rule_priority => prio = true,
            RuleAttribute::Table(t) if *t == cfg.route_table => table = true,
            _ => {}
        }
    }
    mark && prio && table
}

async fn our_rules(handle: &Handle, cfg: &DataplaneConfig, v: IpVersion) -> Result<Vec<RuleMessage>, DataplaneError> {
    let rules: Vec<RuleMessage> = handle.rule().get(v).execute().try_collect().await.map_err(nl("list rules"))?;
    Ok(rules.into_iter().filter(|r| is_ours(r, cfg)).collect())
}

pub async fn install(cfg: &DataplaneConfig) -> Result<(), DataplaneError> {
    let handle = connect()?;
    let lo = ifindex("lo").ok_or_else(|| DataplaneError::NoInterface { interface: "lo".into(), vnet: "-".into() })?;
    for v in [IpVersion::V4, IpVersion::V6] {
        if our_rules(&handle, cfg, v.clone()).await?.is_empty() {
            let req = handle.rule().add().fw_mark(MARK_STEER).table_id(cfg.route_table).priority(cfg.rule_priority).action(RuleAction::ToTable);
            let mut req = match v {
                IpVersion::V4 => {
                    let mut r = req.v4();
                    r.message_mut().attributes.push(RuleAttribute::FwMask(MARK_STEER));
                    r.execute().await
                }
                IpVersion::V6 => {
                    let mut r = req.v6();
                    r.message_mut().attributes.push(RuleAttribute::FwMask(MARK_STEER));
                    r.execute().await
                }
            };
            req = req.map_err(|e| e);
            req.map_err(nl("add fwmark rule"))?;
        }
    }
    let v4 = RouteMessageBuilder::<Ipv4Addr>::new()
        .table_id(cfg.route_table)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .output_interface(lo)
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .build();
    handle.route().add(v4).replace().execute().await.map_err(nl("add IPv4 local route"))?;
    let v6 = RouteMessageBuilder::<Ipv6Addr>::new()
        .table_id(cfg.route_table)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .output_interface(lo)
        .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
        .build();
    handle.route().add(v6).replace().execute().await.map_err(nl("add IPv6 local route"))?;
    Ok(())
}

pub async fn remove(cfg: &DataplaneConfig) -> Result<(), DataplaneError> {
    let handle = connect()?;
    for v in [IpVersion::V4, IpVersion::V6] {
        for r in our_rules(&handle, cfg, v).await? {
            handle.rule().del(r).execute().await.map_err(nl("delete fwmark rule"))?;
        }
    }
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let filter = match family {
            AddressFamily::Inet => RouteMessageBuilder::<Ipv4Addr>::new().table_id(cfg.route_table).build(),
            _ => RouteMessageBuilder::<Ipv6Addr>::new().table_id(cfg.route_table).build(),
        };
        let routes: Vec<_> = handle.route().get(filter).execute().try_collect().await.map_err(nl("list routes"))?;
        for r in routes {
            let table = r.attributes.iter().find_map(|a| match a {
                rtnetlink::packet_route::route::RouteAttribute::Table(t) => Some(*t),
                _ => None,
            });
            if table.unwrap_or(r.header.table as u32) == cfg.route_table {
                handle.route().del(r).execute().await.map_err(nl("delete local route"))?;
            }
        }
    }
    Ok(())
}
