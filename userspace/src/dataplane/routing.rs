//! Policy routing over netlink: packets carrying the steering mark are looked up in our
//! table, whose only route delivers everything locally, where sk_lookup picks the proxy.
//!
//! ```text
//! ip rule add iif lo fwmark 0x80000000/0x80000000 lookup main pref P-1
//! ip rule add fwmark 0x80000000/0x80000000 lookup T pref P
//! ip route add local default dev lo table T
//! ```
//! for IPv4 and IPv6. The accepted socket inherits the SYN's mark (that is how the proxy
//! learns the vnet), so its replies carry it too: the first rule sends locally generated
//! marked packets to the main table instead of back into the local route.

use std::net::{Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use portcullis_common::{MARK_STEER, MARK_UPSTREAM};
use rtnetlink::{
    packet_route::{
        route::{RouteScope, RouteType},
        rule::{RuleAction, RuleAttribute, RuleMessage},
        AddressFamily,
    },
    Handle, IpVersion, RouteMessageBuilder,
};

use super::{preflight::ifindex, DataplaneError};
use crate::{config::DataplaneConfig, targets::TargetSet};

fn nl(what: &str) -> impl FnOnce(rtnetlink::Error) -> DataplaneError + '_ {
    move |source| DataplaneError::Netlink {
        what: what.to_string(),
        source,
    }
}

fn connect() -> Result<Handle, DataplaneError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| DataplaneError::io("open a netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// One of our two rules: its priority, table, and whether it matches only local traffic.
struct RuleSpec {
    priority: u32,
    table: u32,
    local_only: bool,
}

const RT_TABLE_MAIN: u32 = 254;

fn specs(cfg: &DataplaneConfig) -> [RuleSpec; 2] {
    [
        RuleSpec {
            priority: cfg.rule_priority - 1,
            table: RT_TABLE_MAIN,
            local_only: true,
        },
        RuleSpec {
            priority: cfg.rule_priority,
            table: cfg.route_table,
            local_only: false,
        },
    ]
}

fn rule_table(r: &RuleMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(r.header.table as u32)
}

fn matches(r: &RuleMessage, spec: &RuleSpec) -> bool {
    let has = |want: &RuleAttribute| r.attributes.iter().any(|a| a == want);
    has(&RuleAttribute::FwMark(MARK_STEER))
        && has(&RuleAttribute::Priority(spec.priority))
        && rule_table(r) == spec.table
}

async fn rules(handle: &Handle, v: IpVersion) -> Result<Vec<RuleMessage>, DataplaneError> {
    handle
        .rule()
        .get(v)
        .execute()
        .try_collect()
        .await
        .map_err(nl("list rules"))
}

/// The rules that route the proxy's upstream connections of each vnet with a table:
/// `fwmark 0x40000000|id lookup <table>`, two priorities after the steering rule.
fn upstream_specs(set: &TargetSet) -> Vec<(u32, u32)> {
    set.vnets
        .iter()
        .filter_map(|v| v.table.map(|t| (MARK_UPSTREAM | v.id as u32, t)))
        .collect()
}

fn upstream_mark(r: &RuleMessage, cfg: &DataplaneConfig) -> Option<u32> {
    let prio = r
        .attributes
        .iter()
        .any(|a| *a == RuleAttribute::Priority(cfg.rule_priority + 2));
    let mark = r.attributes.iter().find_map(|a| match a {
        RuleAttribute::FwMark(m) if m & MARK_UPSTREAM != 0 => Some(*m),
        _ => None,
    });
    mark.filter(|_| prio)
}

/// Makes the upstream rules match `set`: adds what is missing, removes what is stale.
pub async fn sync_upstream(cfg: &DataplaneConfig, set: &TargetSet) -> Result<(), DataplaneError> {
    let handle = connect()?;
    let want = upstream_specs(set);
    for v in [IpVersion::V4, IpVersion::V6] {
        let existing = rules(&handle, v.clone()).await?;
        for (mark, table) in &want {
            if existing
                .iter()
                .any(|r| upstream_mark(r, cfg) == Some(*mark) && rule_table(r) == *table)
            {
                continue;
            }
            add_rule(
                &handle,
                &v,
                (*mark, u32::MAX),
                *table,
                cfg.rule_priority + 2,
                false,
            )
            .await
            .map_err(nl("add upstream rule"))?;
        }
        for r in existing {
            if let Some(m) = upstream_mark(&r, cfg) {
                if !want
                    .iter()
                    .any(|(mark, table)| *mark == m && rule_table(&r) == *table)
                {
                    handle
                        .rule()
                        .del(r)
                        .execute()
                        .await
                        .map_err(nl("delete upstream rule"))?;
                }
            }
        }
    }
    Ok(())
}

/// `ip [-6] rule add fwmark MARK/MASK [iif lo] lookup TABLE pref PRIORITY`.
async fn add_rule(
    handle: &Handle,
    v: &IpVersion,
    (mark, mask): (u32, u32),
    table: u32,
    priority: u32,
    local_only: bool,
) -> Result<(), rtnetlink::Error> {
    let mut req = handle
        .rule()
        .add()
        .fw_mark(mark)
        .table_id(table)
        .priority(priority)
        .action(RuleAction::ToTable);
    if local_only {
        req = req.input_interface("lo".into());
    }
    req.message_mut().attributes.push(RuleAttribute::FwMask(mask));
    match v {
        IpVersion::V4 => req.v4().execute().await,
        IpVersion::V6 => req.v6().execute().await,
    }
}

pub async fn install(cfg: &DataplaneConfig) -> Result<(), DataplaneError> {
    let handle = connect()?;
    let lo = ifindex("lo").ok_or_else(|| DataplaneError::NoInterface {
        interface: "lo".into(),
        vnet: "-".into(),
    })?;
    for v in [IpVersion::V4, IpVersion::V6] {
        let existing = rules(&handle, v.clone()).await?;
        for spec in specs(cfg) {
            if existing.iter().any(|r| matches(r, &spec)) {
                continue;
            }
            add_rule(
                &handle,
                &v,
                (MARK_STEER, MARK_STEER),
                spec.table,
                spec.priority,
                spec.local_only,
            )
            .await
            .map_err(nl("add fwmark rule"))?;
        }
    }
    let v4 = RouteMessageBuilder::<Ipv4Addr>::new()
        .table_id(cfg.route_table)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .output_interface(lo)
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .build();
    handle
        .route()
        .add(v4)
        .replace()
        .execute()
        .await
        .map_err(nl("add IPv4 local route"))?;
    let v6 = RouteMessageBuilder::<Ipv6Addr>::new()
        .table_id(cfg.route_table)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .output_interface(lo)
        .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
        .build();
    handle
        .route()
        .add(v6)
        .replace()
        .execute()
        .await
        .map_err(nl("add IPv6 local route"))?;
    Ok(())
}

pub async fn remove(cfg: &DataplaneConfig) -> Result<(), DataplaneError> {
    let handle = connect()?;
    for v in [IpVersion::V4, IpVersion::V6] {
        for r in rules(&handle, v).await? {
            if specs(cfg).iter().any(|s| matches(&r, s)) || upstream_mark(&r, cfg).is_some() {
                handle
                    .rule()
                    .del(r)
                    .execute()
                    .await
                    .map_err(nl("delete fwmark rule"))?;
            }
        }
    }
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let filter = match family {
            AddressFamily::Inet => RouteMessageBuilder::<Ipv4Addr>::new()
                .table_id(cfg.route_table)
                .build(),
            _ => RouteMessageBuilder::<Ipv6Addr>::new()
                .table_id(cfg.route_table)
                .build(),
        };
        let routes: Vec<_> = handle
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .map_err(nl("list routes"))?;
        for r in routes {
            let table = r.attributes.iter().find_map(|a| match a {
                rtnetlink::packet_route::route::RouteAttribute::Table(t) => Some(*t),
                _ => None,
            });
            if table.unwrap_or(r.header.table as u32) == cfg.route_table {
                handle
                    .route()
                    .del(r)
                    .execute()
                    .await
                    .map_err(nl("delete local route"))?;
            }
        }
    }
    Ok(())
}
