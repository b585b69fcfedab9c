//! Steady state allocates nothing per packet: after warm-up, a client and a server exchange
//! thousands of packets each way (every cipher) and the heap sees (almost) no allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use portcullis_ssh::msg;
use portcullis_ssh::transport::{Transport, TransportConfig, TransportEvent};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            let _ = COUNT.try_with(|n| n.set(n.get() + 1));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Moves all of `from`'s output into `to` through a reusable buffer, in reads of at most
/// 64 KiB (as from a socket), taking the payloads after each read as a driver would.
fn shuttle(from: &mut Transport, to: &mut Transport, wire: &mut Vec<u8>) -> u64 {
    wire.clear();
    wire.extend_from_slice(from.output());
    let n = wire.len();
    from.advance_output(n);
    let mut received = 0;
    for chunk in wire.chunks(64 * 1024 - 100) {
        to.recv(chunk).unwrap();
        while let Some(p) = to.poll_payload() {
            received += p.len() as u64;
        }
    }
    received
}

fn settle(c: &mut Transport, s: &mut Transport, wire: &mut Vec<u8>) {
    for _ in 0..10 {
        while let Some(e) = c.poll_event() {
            if let TransportEvent::PeerHostKey(_) = e {
                c.host_key_verdict(true);
            }
        }
        while s.poll_event().is_some() {}
        shuttle(c, s, wire);
        shuttle(s, c, wire);
    }
}

#[test]
fn no_allocation_per_packet_in_steady_state() {
    for cipher in portcullis_ssh::transport::cipher::CIPHERS {
        for mac in ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512"] {
            let mut ccfg = TransportConfig::client();
            ccfg.kex = vec!["curve25519-sha256"];
            ccfg.ciphers = vec![cipher];
            ccfg.macs = vec![mac];
            let key = ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[3; 32]));
            let mut scfg = TransportConfig::server(vec![key]);
            scfg.ciphers = ccfg.ciphers.clone();
            scfg.macs = ccfg.macs.clone();
            let mut c = Transport::new(ccfg);
            let mut s = Transport::new(scfg);
            let mut wire = Vec::with_capacity(1 << 20);
            settle(&mut c, &mut s, &mut wire);
            assert!(c.algorithms().is_some() && s.algorithms().is_some());
            let mut payload = vec![msg::CHANNEL_DATA; 32 * 1024];
            payload[1..5].copy_from_slice(&7u32.to_be_bytes());
            let mut received = 0u64;
            let mut round = |count: bool, c: &mut Transport, s: &mut Transport, wire: &mut Vec<u8>| {
                COUNTING.with(|f| f.set(count));
                for _ in 0..8 {
                    c.send(&payload).unwrap();
                    s.send(&payload[..1000]).unwrap();
                }
                received += shuttle(c, s, wire);
                received += shuttle(s, c, wire);
                COUNTING.with(|f| f.set(false));
            };
            for _ in 0..20 {
                round(false, &mut c, &mut s, &mut wire);
            }
            COUNT.with(|n| n.set(0));
            let rounds = 200;
            for _ in 0..rounds {
                round(true, &mut c, &mut s, &mut wire);
            }
            let allocs = COUNT.with(|n| n.get());
            let packets = rounds * 16;
            eprintln!("{cipher} {mac}: {allocs} allocations for {packets} packets");
            assert!(received > 0);
            // Growth of a buffer now and then is fine; one allocation per packet is not.
            assert!(
                allocs * 100 < packets,
                "{cipher} {mac}: {allocs} allocations for {packets} packets"
            );
            if cipher.contains("gcm") || cipher.starts_with("chacha") {
                break; // the MAC is not used
            }
        }
    }
}
