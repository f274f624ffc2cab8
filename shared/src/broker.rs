//! Broker addresses as users write them: `mqtt://host:port` (and `mqtts://` once TLS lands).

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerAddress {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BrokerAddressError {
    #[error("`{0}` is not an MQTT URL: expected mqtt://host:port")]
    Scheme(String),
    #[error("`{0}`: mqtts:// (TLS) is not supported yet; use mqtt:// on a trusted network or a TLS-terminating proxy")]
    TlsUnsupported(String),
    #[error("`{url}`: bad port: {reason}")]
    Port { url: String, reason: String },
    #[error("`{0}`: missing host")]
    Host(String),
}

impl BrokerAddress {
    pub fn parse(url: &str) -> Result<Self, BrokerAddressError> {
        let rest = if let Some(rest) = url.strip_prefix("mqtt://").or_else(|| url.strip_prefix("tcp://")) {
            rest
        } else if url.starts_with("mqtts://") || url.starts_with("ssl://") {
            return Err(BrokerAddressError::TlsUnsupported(url.to_string()));
        } else {
            return Err(BrokerAddressError::Scheme(url.to_string()));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            // A bracketed IPv6 host without a port: the colons are the address's own.
            _ if rest.starts_with('[') && rest.ends_with(']') => (rest, 1883),
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                let port =
                    port.parse::<u16>().map_err(|error| BrokerAddressError::Port { url: url.to_string(), reason: error.to_string() })?;
                (host, port)
            }
            _ => (rest, 1883),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(BrokerAddressError::Host(url.to_string()));
        }
        Ok(BrokerAddress { host: host.to_string(), port })
    }
}

impl fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "mqtt://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "mqtt://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(BrokerAddress::parse("mqtt://127.0.0.1:1884").unwrap(), BrokerAddress { host: "127.0.0.1".into(), port: 1884 });
        assert_eq!(BrokerAddress::parse("mqtt://broker").unwrap().port, 1883);
        assert_eq!(BrokerAddress::parse("mqtt://[::1]:9").unwrap(), BrokerAddress { host: "::1".into(), port: 9 });
        assert_eq!(BrokerAddress::parse("mqtt://[::1]:9").unwrap().to_string(), "mqtt://[::1]:9");
        assert_eq!(BrokerAddress::parse("mqtt://[::1]").unwrap(), BrokerAddress { host: "::1".into(), port: 1883 });
        assert!(matches!(BrokerAddress::parse("http://x"), Err(BrokerAddressError::Scheme(_))));
        assert!(matches!(BrokerAddress::parse("mqtts://x"), Err(BrokerAddressError::TlsUnsupported(_))));
        assert!(matches!(BrokerAddress::parse("mqtt://x:99999"), Err(BrokerAddressError::Port { .. })));
        assert!(matches!(BrokerAddress::parse("mqtt://:1"), Err(BrokerAddressError::Host(_))));
    }
}
