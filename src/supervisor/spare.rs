//! Spare ports for rolling restarts. A slot's spare address is held by the master (a bound,
//! listening socket that nothing accepts on) from start until a replacement is started
//! there, and again once the old process left the other address: so it stays free for the
//! next restart, and no outgoing connection or other program takes it meanwhile. A spare
//! that is taken is replaced by any free loopback port.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// A held spare address; dropping it frees the port for the process started there.
#[derive(Debug)]
pub struct Spare {
    listener: TcpListener,
}

impl Spare {
    /// Holds `preferred` if it can be bound, else any free loopback port.
    ///
    /// # Errors
    /// When not even a free loopback port can be bound.
    pub fn hold(preferred: Option<SocketAddr>) -> std::io::Result<Self> {
        let listener = match preferred.map(TcpListener::bind) {
            Some(Ok(l)) => l,
            _ => TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?,
        };
        Ok(Self { listener })
    }

    /// The address held.
    ///
    /// # Errors
    /// When the socket cannot say (not expected for a bound socket).
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_spare_is_replaced_by_a_free_port() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let wanted = taken.local_addr().unwrap();
        let spare = Spare::hold(Some(wanted)).unwrap();
        let got = spare.addr().unwrap();
        assert_ne!(got, wanted);
        assert!(got.ip().is_loopback());
        assert!(TcpListener::bind(got).is_err(), "held");
        drop(spare);
        assert!(TcpListener::bind(got).is_ok(), "freed on drop");
    }

    #[test]
    fn a_free_spare_is_held_where_wanted() {
        let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let wanted = probe.local_addr().unwrap();
        drop(probe);
        let spare = Spare::hold(Some(wanted)).unwrap();
        assert_eq!(spare.addr().unwrap(), wanted);
    }
}
