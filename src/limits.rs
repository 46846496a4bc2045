//! Admission limits: sockets per node and per user, connection and join rates per node and
//! per IP, and the inbound message rate of one socket. Exceeding one refuses the connection (HTTP 503/429)
//! or the message (an error reply), is counted, and never affects other sockets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::LimitSettings;

/// A per-socket inbound message limiter.
pub type MessageLimiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// The limit a connection or a join went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The node holds `limits.max_sockets` sockets (HTTP 503: try another node).
    NodeFull,
    /// This user holds `limits.max_sockets_per_user` sockets (HTTP 429).
    UserFull,
    /// This IP opens connections faster than `limits.connects_per_ip_per_second` (HTTP 429).
    RateLimited,
    /// The node takes connections faster than `limits.connects_per_second` (HTTP 503).
    NodeBusy,
    /// Over `limits.joins_per_second` on this node (error reply `rate limited`).
    Joins,
    /// Over `limits.joins_per_ip_per_second` from this IP (error reply `rate limited`).
    JoinsPerIp,
}

impl Limit {
    /// The metric / log label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::NodeFull => "node_full",
            Limit::UserFull => "user_full",
            Limit::RateLimited => "rate_limited",
            Limit::NodeBusy => "node_busy",
            Limit::Joins => "joins",
            Limit::JoinsPerIp => "joins_per_ip",
        }
    }
}

/// The node's admission state.
pub struct Limits {
    settings: LimitSettings,
    sockets: AtomicUsize,
    per_user: Mutex<HashMap<String, usize>>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    connects: Option<MessageLimiter>,
    joins: Option<MessageLimiter>,
    joins_per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

/// Holds a socket's place; dropping it releases the place.
pub struct Admission {
    limits: Arc<Limits>,
    user: Option<String>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.limits.sockets.fetch_sub(1, Ordering::Relaxed);
        if let Some(user) = &self.user {
            let mut per_user = self
                .limits
                .per_user
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = per_user.get_mut(user) {
                *n -= 1;
                if *n == 0 {
                    per_user.remove(user);
                    crate::shrink::when_sparse(&mut *per_user);
                }
            }
        }
    }
}

fn quota(per_second: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    Some(Quota::per_second(rate).allow_burst(NonZeroU32::new(burst.max(1)).unwrap_or(rate)))
}

impl Limits {
    /// Limits from the settings (0 disables a limit).
    pub fn new(settings: &LimitSettings) -> Arc<Self> {
        let per_ip = quota(
            settings.connects_per_ip_per_second,
            settings.connects_per_ip_burst,
        )
        .map(RateLimiter::keyed);
        Arc::new(Self {
            settings: settings.clone(),
            sockets: AtomicUsize::new(0),
            per_user: Mutex::default(),
            per_ip,
            connects: quota(settings.connects_per_second, settings.connects_burst)
                .map(RateLimiter::direct),
            joins: quota(settings.joins_per_second, settings.joins_burst).map(RateLimiter::direct),
            joins_per_ip: quota(
                settings.joins_per_ip_per_second,
                settings.joins_per_ip_burst,
            )
            .map(RateLimiter::keyed),
        })
    }

    /// Checks the connection rate of the node and of `ip` (before the connect policy runs).
    pub fn check_rate(&self, ip: Option<IpAddr>) -> Result<(), Limit> {
        if let (Some(limiter), Some(ip)) = (&self.per_ip, ip) {
            if limiter.check_key(&ip).is_err() {
                return Err(Limit::RateLimited);
            }
        }
        match &self.connects {
            Some(limiter) if limiter.check().is_err() => Err(Limit::NodeBusy),
            _ => Ok(()),
        }
    }

    /// Checks the join rate of the node and of `ip`.
    pub fn check_join(&self, ip: Option<IpAddr>) -> Result<(), Limit> {
        if let (Some(limiter), Some(ip)) = (&self.joins_per_ip, ip) {
            if limiter.check_key(&ip).is_err() {
                return Err(Limit::JoinsPerIp);
            }
        }
        match &self.joins {
            Some(limiter) if limiter.check().is_err() => Err(Limit::Joins),
            _ => Ok(()),
        }
    }

    /// Takes a place for a socket of `user` (its socket id), or refuses.
    pub fn admit(self: &Arc<Self>, user: Option<&str>) -> Result<Admission, Limit> {
        let max = self.settings.max_sockets;
        if max > 0 && self.sockets.fetch_add(1, Ordering::Relaxed) >= max {
            self.sockets.fetch_sub(1, Ordering::Relaxed);
            return Err(Limit::NodeFull);
        }
        if max == 0 {
            self.sockets.fetch_add(1, Ordering::Relaxed);
        }
        let per_user_max = self.settings.max_sockets_per_user;
        let user = match user {
            Some(u) if per_user_max > 0 => {
                let mut per_user = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
                let n = per_user.entry(u.to_owned()).or_default();
                if *n >= per_user_max {
                    drop(per_user);
                    self.sockets.fetch_sub(1, Ordering::Relaxed);
                    return Err(Limit::UserFull);
                }
                *n += 1;
                Some(u.to_owned())
            }
            _ => None,
        };
        Ok(Admission {
            limits: self.clone(),
            user,
        })
    }

    /// A limiter for one socket's inbound messages; None when unlimited.
    pub fn message_limiter(&self) -> Option<MessageLimiter> {
        quota(
            self.settings.messages_per_second,
            self.settings.messages_burst,
        )
        .map(RateLimiter::direct)
    }

    /// Forgets per-IP state that is back to a full bucket, and the room it took: without
    /// this every client address ever seen stays in memory. The gateway calls it every
    /// minute.
    pub fn tidy(&self) {
        for l in [&self.per_ip, &self.joins_per_ip].into_iter().flatten() {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LimitSettings {
        LimitSettings {
            max_sockets: 3,
            max_sockets_per_user: 2,
            connects_per_ip_per_second: 2,
            connects_per_ip_burst: 2,
            connects_per_second: 0,
            connects_burst: 1,
            joins_per_second: 0,
            joins_burst: 1,
            joins_per_ip_per_second: 0,
            joins_per_ip_burst: 1,
            messages_per_second: 5,
            messages_burst: 5,
        }
    }

    #[test]
    fn node_and_user_places_are_held_and_released() {
        let limits = Limits::new(&settings());
        let a = limits.admit(Some("u1")).expect("1st");
        let b = limits.admit(Some("u1")).expect("2nd");
        assert_eq!(limits.admit(Some("u1")).err(), Some(Limit::UserFull));
        let c = limits.admit(None).expect("3rd");
        assert_eq!(limits.admit(Some("u2")).err(), Some(Limit::NodeFull));
        drop(a);
        let _d = limits.admit(Some("u1")).expect("place released");
        drop((b, c));
    }

    #[test]
    fn connection_rate_per_ip() {
        let limits = Limits::new(&settings());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(limits.check_rate(Some(ip)).is_ok());
        assert!(limits.check_rate(Some(ip)).is_ok());
        assert_eq!(limits.check_rate(Some(ip)), Err(Limit::RateLimited));
        assert!(
            limits.check_rate(Some(other)).is_ok(),
            "other IPs are not affected"
        );
    }

    #[test]
    fn message_rate() {
        let limits = Limits::new(&settings());
        let l = limits.message_limiter().expect("limited");
        assert_eq!((0..10).filter(|_| l.check().is_ok()).count(), 5);
        let unlimited = Limits::new(&LimitSettings::default());
        assert!(unlimited
            .message_limiter()
            .is_some_and(|l| (0..50).all(|_| l.check().is_ok())));
    }
}
