//! Where a domain's mail goes: a static route (tests, smart hosts) or its MX
//! records, in preference order, resolved with hickory against a configurable
//! DNS server.

use crate::config::Config;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// One host to try, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The MX (or route) host name, as named in DNS or the config.
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

/// Why no host could be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The domain publishes a null MX (RFC 7505): it accepts no mail.
    #[error("{0} publishes a null MX (RFC 7505): it accepts no mail")]
    NullMx(String),
    /// The domain does not exist.
    #[error("{0}: domain not found (NXDOMAIN)")]
    NoSuchDomain(String),
    /// A DNS failure that may clear (timeout, SERVFAIL, no address yet).
    #[error("{0}")]
    Temporary(String),
}

impl RouteError {
    /// True when retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, RouteError::NullMx(_) | RouteError::NoSuchDomain(_))
    }
}

/// Resolves domains to targets.
pub struct Router {
    routes: HashMap<String, Vec<String>>,
    resolver: TokioResolver,
    mx_port: u16,
}

impl Router {
    /// Build from the config's `[route.*]` and `[dns]` sections.
    pub fn new(config: &Config) -> anyhow::Result<Router> {
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(5);
        opts.attempts = 2;
        let resolver = if config.dns.servers.is_empty() {
            TokioResolver::builder_tokio()?.with_options(opts).build()?
        } else {
            let servers = config
                .dns
                .servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
            .with_options(opts)
            .build()?
        };
        Ok(Router {
            routes: config
                .route
                .iter()
                .map(|(d, r)| (d.to_ascii_lowercase(), r.hosts.clone()))
                .collect(),
            resolver,
            mx_port: config.dns.mx_port.unwrap_or(25),
        })
    }

    /// Targets for `domain`, most preferred first.
    pub async fn resolve(&self, domain: &str) -> Result<Vec<Target>, RouteError> {
        let domain = domain.to_ascii_lowercase();
        if let Some(hosts) = self.routes.get(&domain).or_else(|| self.routes.get("*")) {
            let mut out = Vec::new();
            for h in hosts {
                out.push(self.static_target(h).await?);
            }
            return Ok(out);
        }
        self.mx_targets(&domain).await
    }

    async fn static_target(&self, spec: &str) -> Result<Target, RouteError> {
        if let Ok(addr) = spec.parse::<SocketAddr>() {
            return Ok(Target {
                host: addr.ip().to_string(),
                addrs: vec![addr],
            });
        }
        let (host, port) = match spec.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| RouteError::Temporary(format!("route host {spec:?}: bad port")))?,
            ),
            None => (spec, self.mx_port),
        };
        Ok(Target {
            host: host.to_owned(),
            addrs: self.addresses(host, port).await?,
        })
    }

    async fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, RouteError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let lookup = self
            .resolver
            .lookup_ip(format!("{}.", host.trim_end_matches('.')))
            .await
            .map_err(|e| RouteError::Temporary(format!("address lookup for {host}: {e}")))?;
        let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(RouteError::Temporary(format!("{host} has no address")));
        }
        Ok(addrs)
    }

    async fn mx_targets(&self, domain: &str) -> Result<Vec<Target>, RouteError> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let mut mxs: Vec<(u16, u32, String)> = match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((
                        mx.preference,
                        // RFC 5321 §5.1: spread load across MX hosts of equal preference.
                        rand::random::<u32>(),
                        mx.exchange
                            .to_ascii()
                            .trim_end_matches('.')
                            .to_ascii_lowercase(),
                    )),
                    _ => None,
                })
                .collect(),
            Err(e) if e.is_nx_domain() => return Err(RouteError::NoSuchDomain(domain.into())),
            // No MX: the domain's own address is the implicit MX (RFC 5321 §5.1).
            Err(e) if e.is_no_records_found() => vec![(0, 0, domain.to_owned())],
            Err(e) => {
                return Err(RouteError::Temporary(format!(
                    "MX lookup for {domain}: {e}"
                )));
            }
        };
        if mxs.len() == 1 && mxs[0].2.is_empty() {
            return Err(RouteError::NullMx(domain.into()));
        }
        mxs.sort();
        let mut out = Vec::new();
        let mut last_err = None;
        for (_, _, host) in mxs {
            if host.is_empty() {
                continue;
            }
            match self.addresses(&host, self.mx_port).await {
                Ok(addrs) => out.push(Target { host, addrs }),
                Err(e) => last_err = Some(e),
            }
        }
        if out.is_empty() {
            return Err(last_err
                .unwrap_or_else(|| RouteError::Temporary(format!("{domain}: no usable MX"))));
        }
        Ok(out)
    }
}
