//! An IP address that one writer changes while many readers load it without a lock: a
//! sequence lock over two 64-bit words (an IPv4 address is held in its IPv6-mapped form).
//! Only a discovered worker's slot ever changes its address, and only while it is vacant,
//! so a reader retries at most around that rare store.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// A lock-free IP address cell for one writer.
#[derive(Debug)]
pub struct AtomicIp {
    /// Odd while a store is under way.
    seq: AtomicU32,
    words: [AtomicU64; 2],
}

impl AtomicIp {
    /// A cell holding `ip`.
    pub fn new(ip: IpAddr) -> Self {
        let [hi, lo] = words(ip);
        Self {
            seq: AtomicU32::new(0),
            words: [AtomicU64::new(hi), AtomicU64::new(lo)],
        }
    }

    /// The address.
    #[inline]
    pub fn load(&self) -> IpAddr {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            let hi = self.words[0].load(Ordering::Relaxed);
            let lo = self.words[1].load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if before & 1 == 0 && self.seq.load(Ordering::Relaxed) == before {
                return ip_of(hi, lo);
            }
            std::hint::spin_loop();
        }
    }

    /// Replaces the address. One writer at a time (the caller serializes stores).
    pub fn store(&self, ip: IpAddr) {
        let [hi, lo] = words(ip);
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.words[0].store(hi, Ordering::Relaxed);
        self.words[1].store(lo, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }
}

fn words(ip: IpAddr) -> [u64; 2] {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let bits = u128::from(v6);
    [(bits >> 64) as u64, bits as u64]
}

fn ip_of(hi: u64, lo: u64) -> IpAddr {
    let v6 = Ipv6Addr::from((u128::from(hi) << 64) | u128::from(lo));
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn both_families_come_back_as_stored() {
        for ip in ["127.0.0.1", "0.0.0.0", "::1", "fe80::1:2", "::"] {
            let ip: IpAddr = ip.parse().unwrap();
            let cell = AtomicIp::new(IpAddr::from([10, 0, 0, 1]));
            cell.store(ip);
            assert_eq!(cell.load(), ip);
            assert_eq!(AtomicIp::new(ip).load(), ip);
        }
    }

    #[test]
    fn readers_never_see_half_of_a_store() {
        let a: IpAddr = "10.1.2.3".parse().unwrap();
        let b: IpAddr = "fd00::aaaa:bbbb:cccc:dddd".parse().unwrap();
        let cell = Arc::new(AtomicIp::new(a));
        let reader = {
            let cell = cell.clone();
            std::thread::spawn(move || {
                for _ in 0..200_000 {
                    let ip = cell.load();
                    assert!(ip == a || ip == b, "torn read: {ip}");
                }
            })
        };
        for i in 0..200_000 {
            cell.store(if i % 2 == 0 { b } else { a });
        }
        reader.join().unwrap();
    }
}
