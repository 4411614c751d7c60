//! Which upstreams the connection proxy may reach: a guard against server-side request forgery.
//!
//! # Threat model
//! Whoever can create a connection chooses its base URL, and every backend that calls the
//! gateway chooses the rest of the path. The proxy runs next to the vault's database, cloud
//! metadata endpoints and other internal services, so without a guard a connection could read
//! `http://169.254.169.254/` credentials or reach an internal admin API with the vault's network
//! position. The guard therefore:
//! - accepts only `https` base URLs (plain `http` only for hosts the operator lists), without
//!   credentials, query or fragment ([`validate_base_url`]);
//! - refuses addresses in loopback, private, link-local, shared (CGNAT), multicast, reserved and
//!   documentation ranges and cloud metadata endpoints, including IPv4 addresses embedded in IPv6
//!   (mapped, compatible, NAT64, 6to4) ([`check_addr`]), unless the operator allows the network;
//! - checks at *connect* time, in the HTTP client's DNS resolver ([`GuardedResolver`]), so a
//!   name that resolves to a public address when the connection is created and to an internal one
//!   later (DNS rebinding) is still refused. IP-literal hosts never reach a resolver, so they are
//!   checked when the base URL is validated; [`check_url_now`] also resolves names once for an
//!   early, clear error at configuration time;
//! - keeps the caller's path under the base URL's path ([`join_path`]): no dot segments (also
//!   percent-encoded, also double- and triple-encoded), no encoded slashes or backslashes, no
//!   `//`, `@`, control characters or other tricks that could change the host or climb out of
//!   the base path;
//! - builds HTTP clients that neither follow redirects nor use proxies ([`client_builder`]):
//!   a redirect to an IP literal, or a proxy resolving names itself, would bypass the resolver.
//!
//! Errors name the rule broken, never the caller's path or query (they may carry tokens or
//! values) and never the resolved address (the caller is not told about internal networks).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use percent_encoding::percent_decode;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// The setting that widens the address rules.
const ALLOW_NETWORKS: &str = "STRONGROOM_EGRESS_ALLOW_NETWORKS";
/// The setting that lists the hosts reachable over plain http.
const ALLOW_HTTP_HOSTS: &str = "STRONGROOM_EGRESS_ALLOW_HTTP_HOSTS";

/// How many times a path segment is percent-decoded when looking for hidden dots and slashes,
/// for upstreams that decode more than once.
pub(super) const DECODE_ROUNDS: usize = 3;

/// The operator's exceptions to the default egress rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Hosts that may be reached over plain `http` (names or IP addresses, compared without case).
    /// Their addresses must still pass [`check_addr`].
    pub allow_http_hosts: Vec<String>,
    /// Networks whose addresses are allowed even in a refused range.
    pub allow_networks: Vec<Network>,
}

impl EgressPolicy {
    /// Builds a policy from the settings' comma-separated lists, such as `localhost,10.1.2.3`
    /// and `127.0.0.1/32, 10.0.0.0/8, ::1/128`. Empty items are ignored.
    pub fn parse(allow_http_hosts: &str, allow_networks: &str) -> Result<Self, EgressError> {
        let allow_http_hosts: Vec<String> = items(allow_http_hosts).map(str::to_owned).collect();
        if let Some(entry) = allow_http_hosts
            .iter()
            .find(|host| normalise_host(host).is_none())
        {
            return Err(EgressError::InvalidHttpHost {
                entry: entry.clone(),
            });
        }
        let allow_networks = parse_networks(allow_networks, ALLOW_NETWORKS)?;
        Ok(EgressPolicy {
            allow_http_hosts,
            allow_networks,
        })
    }

    fn allows_http(&self, host: &Host<&str>) -> bool {
        let host = match host {
            Host::Domain(name) => normalise_host(name),
            Host::Ipv4(ip) => Some(ip.to_string()),
            Host::Ipv6(ip) => Some(ip.to_string()),
        };
        host.is_some_and(|host| {
            self.allow_http_hosts
                .iter()
                .any(|allowed| normalise_host(allowed).as_ref() == Some(&host))
        })
    }

    /// Whether an allowed network covers `ip` (or the IPv4 address inside it). Metadata
    /// endpoints need an entry for exactly their address, so a broad entry such as
    /// `169.254.0.0/16` or `0.0.0.0/0` never opens them by accident.
    fn allows(&self, ip: IpAddr, class: Forbidden) -> bool {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allow_networks.iter().any(|network| {
            (class != Forbidden::Metadata || network.is_single_address())
                && [Some(ip), embedded]
                    .into_iter()
                    .flatten()
                    .any(|candidate| network.contains(candidate))
        })
    }
}

/// A host name or IP address in a canonical spelling: lowercase, no trailing dot, IPv6 without
/// brackets. `None` if it is not a plausible host.
fn normalise_host(host: &str) -> Option<String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    let plausible = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    plausible.then_some(name)
}

/// The networks of a setting's comma-separated list, such as `127.0.0.1/32, 10.0.0.0/8, ::1`.
/// Empty items are ignored; an error names `setting`.
pub fn parse_networks(list: &str, setting: &'static str) -> Result<Vec<Network>, EgressError> {
    items(list)
        .map(|item| Network::parse_in(item, setting))
        .collect()
}

/// The items of a setting's comma-separated list, trimmed, without empty ones.
fn items(list: &str) -> impl Iterator<Item = &str> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// An IP network: an address and a prefix length, such as `10.0.0.0/8` or `::1/128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    // INVARIANT: `addr` is the network's first address (no bits set beyond `prefix`), and
    // `prefix` is at most the address length.
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Whether `ip` is in this network (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && masked(ip, self.prefix) == self.addr
    }

    fn is_single_address(&self) -> bool {
        self.prefix == max_prefix(self.addr)
    }
}

/// `ip` with every bit beyond `prefix` cleared.
fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & mask))
        }
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl FromStr for Network {
    type Err = EgressError;

    /// Parses `address/prefix`, an entry of [`ALLOW_NETWORKS`]; a bare address is a network of
    /// that one address.
    fn from_str(entry: &str) -> Result<Self, EgressError> {
        Network::parse_in(entry, ALLOW_NETWORKS)
    }
}

impl Network {
    /// [`Network::from_str`] for an entry of `setting` (named in the error).
    fn parse_in(entry: &str, setting: &'static str) -> Result<Self, EgressError> {
        let invalid = |reason| EgressError::InvalidNetwork {
            entry: entry.to_owned(),
            reason,
            setting,
        };
        let (addr, prefix) = entry.split_once('/').unwrap_or((entry, ""));
        let addr: IpAddr = addr.parse().map_err(|_| invalid("not an IP address"))?;
        let max = max_prefix(addr);
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse()
                .ok()
                .filter(|prefix| *prefix <= max)
                .ok_or_else(|| match addr {
                    IpAddr::V4(_) => invalid("the prefix length must be a number from 0 to 32"),
                    IpAddr::V6(_) => invalid("the prefix length must be a number from 0 to 128"),
                })?
        };
        // A typo such as `10.1.2.3/8` (for `/32`?) must not silently open a whole network.
        if masked(addr, prefix) != addr {
            return Err(invalid(
                "the address has bits set beyond the prefix: write the network's first address",
            ));
        }
        Ok(Network { addr, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why an address is refused by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forbidden {
    Unspecified,
    Loopback,
    Private,
    SharedAddressSpace,
    LinkLocal,
    Metadata,
    Multicast,
    Broadcast,
    Documentation,
    Reserved,
    Teredo,
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Forbidden::Unspecified => "an unspecified (\"this network\") address",
            Forbidden::Loopback => "a loopback address",
            Forbidden::Private => "in a private range",
            Forbidden::SharedAddressSpace => "in the shared (carrier-grade NAT) range",
            Forbidden::LinkLocal => "a link-local address",
            Forbidden::Metadata => "a cloud metadata endpoint",
            Forbidden::Multicast => "a multicast address",
            Forbidden::Broadcast => "the broadcast address",
            Forbidden::Documentation => "in a documentation range",
            Forbidden::Reserved => "in a reserved range",
            Forbidden::Teredo => "a Teredo tunnel address",
        })
    }
}

impl Forbidden {
    fn remedy(self) -> String {
        match self {
            Forbidden::Metadata => {
                format!(
                    "add exactly this address (a /32 or /128 entry) to {ALLOW_NETWORKS} to allow it"
                )
            }
            _ => format!("add it to {ALLOW_NETWORKS} to allow it"),
        }
    }
}

/// Cloud metadata endpoints: AWS, GCP, Azure, Oracle and others (`169.254.169.254`), AWS ECS
/// task metadata, Oracle's legacy endpoint, Alibaba Cloud, and Azure's WireServer
/// (`168.63.129.16`: a public-range address every Azure VM reaches as a platform endpoint that
/// serves goal state and extension configuration).
const METADATA_V4: [Ipv4Addr; 5] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(192, 0, 0, 192),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(168, 63, 129, 16),
];

/// AWS's IPv6 metadata endpoint.
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)];

/// Refused IPv4 ranges, more specific first.
const V4_RANGES: [(Ipv4Addr, u8, Forbidden); 16] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8, Forbidden::Unspecified),
    (Ipv4Addr::new(10, 0, 0, 0), 8, Forbidden::Private),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        Forbidden::SharedAddressSpace,
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, Forbidden::Loopback),
    (Ipv4Addr::new(169, 254, 0, 0), 16, Forbidden::LinkLocal),
    (Ipv4Addr::new(172, 16, 0, 0), 12, Forbidden::Private),
    (Ipv4Addr::new(192, 0, 0, 0), 24, Forbidden::Reserved),
    (Ipv4Addr::new(192, 0, 2, 0), 24, Forbidden::Documentation),
    (Ipv4Addr::new(192, 88, 99, 0), 24, Forbidden::Reserved),
    (Ipv4Addr::new(192, 168, 0, 0), 16, Forbidden::Private),
    (Ipv4Addr::new(198, 18, 0, 0), 15, Forbidden::Reserved),
    (Ipv4Addr::new(198, 51, 100, 0), 24, Forbidden::Documentation),
    (Ipv4Addr::new(203, 0, 113, 0), 24, Forbidden::Documentation),
    (Ipv4Addr::new(255, 255, 255, 255), 32, Forbidden::Broadcast),
    (Ipv4Addr::new(224, 0, 0, 0), 4, Forbidden::Multicast),
    (Ipv4Addr::new(240, 0, 0, 0), 4, Forbidden::Reserved),
];

/// Refused IPv6 ranges (addresses embedding IPv4 are judged by their IPv4 address).
const V6_RANGES: [(Ipv6Addr, u8, Forbidden); 13] = [
    (Ipv6Addr::UNSPECIFIED, 128, Forbidden::Unspecified),
    (Ipv6Addr::LOCALHOST, 128, Forbidden::Loopback),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        Forbidden::Private,
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        Forbidden::Reserved,
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        32,
        Forbidden::Teredo,
    ),
    (
        Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0),
        48,
        Forbidden::Reserved,
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        Forbidden::Documentation,
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        Forbidden::Documentation,
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        Forbidden::Private,
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        Forbidden::LinkLocal,
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        Forbidden::Private,
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        Forbidden::Multicast,
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        Forbidden::Reserved,
    ),
];

/// The IPv4 address inside an IPv6 one that routes to it: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`, not `::` or `::1`), NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let [a, b, c, d, e, f, g, h] = ip.segments();
    let low = Ipv4Addr::from_bits((u32::from(g) << 16) | u32::from(h));
    match (a, b, c, d, e, f) {
        (0, 0, 0, 0, 0, 0xffff) => Some(low),
        (0, 0, 0, 0, 0, 0) if g != 0 => Some(low),
        (0x64, 0xff9b, 0, 0, 0, 0) => Some(low),
        (0x2002, ..) => Some(Ipv4Addr::from_bits((u32::from(b) << 16) | u32::from(c))),
        _ => None,
    }
}

/// The reason `ip` is refused by default, if it is.
fn classify(ip: IpAddr) -> Option<Forbidden> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => classify_v4(v4),
            None if METADATA_V6.contains(&v6) => Some(Forbidden::Metadata),
            None => V6_RANGES
                .iter()
                .find(|(net, prefix, _)| in_network(IpAddr::V6(*net), *prefix, ip))
                .map(|(_, _, class)| *class),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Forbidden> {
    if METADATA_V4.contains(&ip) {
        return Some(Forbidden::Metadata);
    }
    V4_RANGES
        .iter()
        .find(|(net, prefix, _)| in_network(IpAddr::V4(*net), *prefix, IpAddr::V4(ip)))
        .map(|(_, _, class)| *class)
}

fn in_network(addr: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    Network { addr, prefix }.contains(ip)
}

/// Checks that the proxy may connect to `ip`: refused ranges (see the module docs) are allowed
/// only inside the policy's networks.
pub fn check_addr(ip: IpAddr, policy: &EgressPolicy) -> Result<(), EgressError> {
    match classify(ip) {
        Some(class) if !policy.allows(ip, class) => Err(EgressError::Blocked { addr: ip, class }),
        _ => Ok(()),
    }
}

/// Errors of the egress guard. Messages name the rule broken; they never contain a caller's
/// path or query, nor a resolved address ([`EgressError::Blocked`] keeps it for logs).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error(
        "invalid network `{entry}` in {setting}: {reason} (write networks as 10.0.0.0/8 or ::1/128)"
    )]
    InvalidNetwork {
        entry: String,
        reason: &'static str,
        setting: &'static str,
    },
    #[error("`{entry}` in {ALLOW_HTTP_HOSTS} is not a host name or IP address")]
    InvalidHttpHost { entry: String },
    #[error("the upstream URL is not an absolute URL")]
    NotAbsolute,
    #[error("the upstream URL must use https (http only for hosts in {ALLOW_HTTP_HOSTS})")]
    Scheme,
    #[error(
        "the upstream URL must not carry a user name or password: send credentials in connection headers"
    )]
    Userinfo,
    #[error("the upstream URL must not carry a query")]
    Query,
    #[error("the upstream URL must not carry a fragment")]
    Fragment,
    #[error("the upstream URL has no host")]
    NoHost,
    #[error("the upstream host does not resolve to any address")]
    Unresolvable,
    #[error("the upstream address is {class}; {}", class.remedy())]
    Blocked { addr: IpAddr, class: Forbidden },
    #[error("the gateway path {0}")]
    Path(PathRule),
}

/// The rule a gateway path or query breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathRule {
    Character,
    Escape,
    DotSegment,
    EncodedSeparator,
    EmptySegment,
    QueryCharacter,
    OutsideBase,
}

impl fmt::Display for PathRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathRule::Character => {
                "contains a character that is not allowed in a path (such as `@`, `\\`, a space, a control character or a non-ASCII character)"
            }
            PathRule::Escape => "contains a malformed percent-escape",
            PathRule::DotSegment => "contains a `.` or `..` segment (perhaps percent-encoded)",
            PathRule::EncodedSeparator => {
                "contains an encoded slash, backslash or control character"
            }
            PathRule::EmptySegment => "contains an empty segment (`//`)",
            PathRule::QueryCharacter => {
                "has a query with a character that is not allowed (such as `#`, a space, a control character or a non-ASCII character)"
            }
            PathRule::OutsideBase => "leads outside the connection's base URL",
        })
    }
}

/// Validates a connection's base URL. Returns it without a trailing slash (`https://h/v1/` and
/// `https://h/v1` are the same base), so [`join_path`] can append to it. A host given as an IP
/// address is checked here, because the resolver never sees it; call [`check_url_now`] too.
pub fn validate_base_url(raw: &str, policy: &EgressPolicy) -> Result<Url, EgressError> {
    let mut url = Url::parse(raw).map_err(|_| EgressError::NotAbsolute)?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(EgressError::Scheme);
    }
    let host = url.host().ok_or(EgressError::NoHost)?;
    if url.scheme() == "http" && !policy.allows_http(&host) {
        return Err(EgressError::Scheme);
    }
    if let Some(ip) = literal_ip(&host) {
        check_addr(ip, policy)?;
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EgressError::Userinfo);
    }
    if url.query().is_some() {
        return Err(EgressError::Query);
    }
    if url.fragment().is_some() {
        return Err(EgressError::Fragment);
    }
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}

fn literal_ip(host: &Host<&str>) -> Option<IpAddr> {
    match host {
        Host::Ipv4(ip) => Some(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => Some(IpAddr::V6(*ip)),
        Host::Domain(_) => None,
    }
}

/// Checks a URL's host now: an IP address directly, a name by resolving it (at least one
/// address must pass [`check_addr`]). For configuration time; requests are checked again at
/// connect time by [`GuardedResolver`].
pub async fn check_url_now(url: &Url, policy: &EgressPolicy) -> Result<(), EgressError> {
    match url.host().ok_or(EgressError::NoHost)? {
        Host::Domain(name) => resolve_allowed(name, policy).await.map(drop),
        host => literal_ip(&host).map_or(Err(EgressError::NoHost), |ip| check_addr(ip, policy)),
    }
}

/// Resolves `name` and keeps the addresses the policy allows; an error if none remain.
async fn resolve_allowed(
    name: &str,
    policy: &EgressPolicy,
) -> Result<Vec<SocketAddr>, EgressError> {
    let resolved = tokio::net::lookup_host((name, 0))
        .await
        .map_err(|_| EgressError::Unresolvable)?;
    let mut allowed = Vec::new();
    let mut refused = None;
    for addr in resolved {
        match check_addr(addr.ip(), policy) {
            Ok(()) => allowed.push(addr),
            Err(e) => {
                refused.get_or_insert(e);
            }
        }
    }
    match (allowed.is_empty(), refused) {
        (false, _) => Ok(allowed),
        (true, Some(refusal)) => Err(refusal),
        (true, None) => Err(EgressError::Unresolvable),
    }
}

/// Appends a gateway caller's path and query to a base URL from [`validate_base_url`].
///
/// `path` is the rest of `/v1/gateway/{connection}/{path…}` exactly as received, still
/// percent-encoded; `query` is the raw query string, without `?`. Ordinary escapes are kept as
/// they are. The path may only use unreserved characters, sub-delimiters, `:` and
/// percent-escapes; no segment may be `.` or `..`, or become one, or contain a slash, backslash
/// or control character, once decoded (up to three times, for upstreams that decode more than
/// once); a `;` parameter does not hide a dot segment (`..;x`). Empty segments are refused except for
/// one trailing slash. The result always has the base's scheme, host and port, and a path
/// under the base's path.
pub fn join_path(base: &Url, path: &str, query: Option<&str>) -> Result<Url, EgressError> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let base_path = base.path().trim_end_matches('/');
    let mut joined = base_path.to_owned();
    if !rest.is_empty() {
        let mut segments = rest.split('/').peekable();
        while let Some(segment) = segments.next() {
            let last = segments.peek().is_none();
            if segment.is_empty() && !last {
                return Err(EgressError::Path(PathRule::EmptySegment));
            }
            check_segment(segment)?;
        }
        joined.push('/');
        joined.push_str(rest);
    }
    if joined.is_empty() {
        joined.push('/');
    }
    let mut url = base.clone();
    url.set_path(&joined);
    match query.filter(|q| !q.is_empty()) {
        Some(query) => {
            let allowed = |b: u8| b.is_ascii_graphic() && b != b'#';
            if !query.bytes().all(allowed) {
                return Err(EgressError::Path(PathRule::QueryCharacter));
            }
            url.set_query(Some(query));
        }
        None => url.set_query(None),
    }
    // INVARIANT: the request goes to the validated host, under the base path, with the path
    // exactly as checked (the URL parser re-encoded or normalised nothing).
    let under_base = url.path() == joined
        && (url.path() == base_path || url.path().starts_with(&format!("{base_path}/")));
    if !under_base
        || url.scheme() != base.scheme()
        || url.host() != base.host()
        || url.port_or_known_default() != base.port_or_known_default()
    {
        return Err(EgressError::Path(PathRule::OutsideBase));
    }
    Ok(url)
}

/// Checks one raw path segment (see [`join_path`]).
fn check_segment(segment: &str) -> Result<(), EgressError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:%".contains(&b);
    if !segment.bytes().all(allowed) {
        return Err(EgressError::Path(PathRule::Character));
    }
    let bytes = segment.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(at, &b)| {
        b != b'%'
            || bytes
                .get(at + 1..at + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return Err(EgressError::Path(PathRule::Escape));
    }
    let mut current = bytes.to_vec();
    // The raw segment, then each of its decodings: `DECODE_ROUNDS + 1` forms are checked.
    for round in 0..=DECODE_ROUNDS {
        if current
            .iter()
            .any(|&b| b == b'/' || b == b'\\' || b.is_ascii_control())
        {
            return Err(EgressError::Path(PathRule::EncodedSeparator));
        }
        let stem = current.split(|&b| b == b';').next().unwrap_or_default();
        if stem == b"." || stem == b".." {
            return Err(EgressError::Path(PathRule::DotSegment));
        }
        if round == DECODE_ROUNDS {
            break;
        }
        let decoded: Vec<u8> = percent_decode(&current).collect();
        if decoded == current {
            break;
        }
        current = decoded;
    }
    Ok(())
}

/// A DNS resolver for the HTTP client that drops every address [`check_addr`] refuses, and
/// fails when none remain. Checking when connecting, not before, defeats DNS rebinding.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<EgressPolicy>) -> Self {
        GuardedResolver { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let allowed = resolve_allowed(name.as_str(), &policy).await?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// An HTTP client builder for upstream requests: names resolve through [`GuardedResolver`],
/// no proxy is used (a proxy would resolve names itself) and redirects are not followed (a
/// redirect to an IP literal would skip the resolver; the caller gets the 3xx response).
///
/// INVARIANT: every URL given to the client comes from [`join_path`] on a base URL that passed
/// [`validate_base_url`], which checked IP-literal hosts.
pub fn client_builder(policy: Arc<EgressPolicy>) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver::new(policy)))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(http_hosts: &str, networks: &str) -> EgressPolicy {
        EgressPolicy::parse(http_hosts, networks).unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| unreachable!("{text}: {e}"))
    }

    fn refused(text: &str, policy: &EgressPolicy) -> Option<Forbidden> {
        match check_addr(ip(text), policy) {
            Ok(()) => None,
            Err(EgressError::Blocked { class, .. }) => Some(class),
            Err(e) => unreachable!("{e}"),
        }
    }

    #[test]
    fn parses_networks() {
        let cases = [
            ("127.0.0.1/32", "127.0.0.1/32"),
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("::1/128", "::1/128"),
            ("fd00::/8", "fd00::/8"),
            ("192.168.1.7", "192.168.1.7/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
        ];
        for (text, shown) in cases {
            let network: Result<Network, _> = text.parse();
            assert_eq!(
                network.map(|n| n.to_string()),
                Ok(shown.to_owned()),
                "{text}"
            );
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/x",
            "10.0.0/8",
            "localhost/32",
            "10.1.2.3/8",
            "/8",
        ] {
            let result: Result<Network, _> = bad.parse();
            assert!(
                matches!(result, Err(EgressError::InvalidNetwork { .. })),
                "{bad}"
            );
        }
        let message = "10.1.2.3/8".parse::<Network>().err().map(|e| e.to_string());
        assert_eq!(
            message.as_deref(),
            Some(
                "invalid network `10.1.2.3/8` in STRONGROOM_EGRESS_ALLOW_NETWORKS: the address has bits set beyond the prefix: write the network's first address (write networks as 10.0.0.0/8 or ::1/128)"
            )
        );
    }

    #[test]
    fn parses_policies() {
        let parsed = EgressPolicy::parse(" localhost, [::1] ,", "127.0.0.1/32, ::1/128");
        assert_eq!(parsed.as_ref().map(|p| p.allow_http_hosts.len()), Ok(2));
        assert_eq!(parsed.map(|p| p.allow_networks.len()), Ok(2));
        assert!(matches!(
            EgressPolicy::parse("http://localhost", ""),
            Err(EgressError::InvalidHttpHost { .. })
        ));
        assert!(EgressPolicy::parse("", "10.0.0.0/8,nope").is_err());
        assert_eq!(EgressPolicy::parse("", ""), Ok(EgressPolicy::default()));
    }

    #[test]
    fn range_tables_hold_network_addresses() {
        let v4 = V4_RANGES.iter().map(|(a, p, _)| (IpAddr::V4(*a), *p));
        let v6 = V6_RANGES.iter().map(|(a, p, _)| (IpAddr::V6(*a), *p));
        for (addr, prefix) in v4.chain(v6) {
            assert!(
                prefix <= max_prefix(addr) && masked(addr, prefix) == addr,
                "{addr}/{prefix}"
            );
        }
    }

    #[test]
    fn network_membership() {
        let net: Network = "10.0.0.0/8".parse().unwrap_or_else(|e| unreachable!("{e}"));
        assert!(net.contains(ip("10.255.1.2")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("::ffff:10.0.0.1")));
        let all: Network = "::/0".parse().unwrap_or_else(|e| unreachable!("{e}"));
        assert!(all.contains(ip("2001:db8::1")) && !all.contains(ip("1.1.1.1")));
    }

    #[test]
    fn refuses_internal_addresses_by_default() {
        let none = EgressPolicy::default();
        let cases = [
            ("127.0.0.1", Forbidden::Loopback),
            ("127.8.9.10", Forbidden::Loopback),
            ("::1", Forbidden::Loopback),
            ("0.0.0.0", Forbidden::Unspecified),
            ("::", Forbidden::Unspecified),
            ("10.1.2.3", Forbidden::Private),
            ("172.16.0.1", Forbidden::Private),
            ("172.31.255.255", Forbidden::Private),
            ("192.168.1.1", Forbidden::Private),
            ("fc00::1", Forbidden::Private),
            ("fd12:3456::1", Forbidden::Private),
            ("169.254.1.1", Forbidden::LinkLocal),
            ("fe80::1", Forbidden::LinkLocal),
            ("169.254.169.254", Forbidden::Metadata),
            ("169.254.170.2", Forbidden::Metadata),
            ("fd00:ec2::254", Forbidden::Metadata),
            ("100.100.100.200", Forbidden::Metadata),
            ("168.63.129.16", Forbidden::Metadata),
            ("::ffff:168.63.129.16", Forbidden::Metadata),
            ("100.64.0.1", Forbidden::SharedAddressSpace),
            ("100.127.255.255", Forbidden::SharedAddressSpace),
            ("224.0.0.1", Forbidden::Multicast),
            ("ff02::1", Forbidden::Multicast),
            ("255.255.255.255", Forbidden::Broadcast),
            ("240.0.0.1", Forbidden::Reserved),
            ("192.0.2.1", Forbidden::Documentation),
            ("2001:db8::1", Forbidden::Documentation),
            ("2001::1", Forbidden::Teredo),
            // IPv4 inside IPv6: mapped, compatible, NAT64, 6to4.
            ("::ffff:127.0.0.1", Forbidden::Loopback),
            ("::ffff:169.254.169.254", Forbidden::Metadata),
            ("::ffff:10.0.0.1", Forbidden::Private),
            ("::10.0.0.1", Forbidden::Private),
            ("64:ff9b::a9fe:a9fe", Forbidden::Metadata),
            ("2002:7f00:1::", Forbidden::Loopback),
            ("2002:c0a8:101::1", Forbidden::Private),
        ];
        for (text, class) in cases {
            assert_eq!(refused(text, &none), Some(class), "{text}");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "168.63.129.17",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(refused(public, &none), None, "{public}");
        }
    }

    #[test]
    fn allow_list_permits_networks_but_metadata_only_exactly() {
        let listed = policy("", "127.0.0.1/32, 10.0.0.0/8, ::1/128, 169.254.0.0/16");
        for allowed in [
            "127.0.0.1",
            "::1",
            "10.9.8.7",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "169.254.1.1",
        ] {
            assert_eq!(refused(allowed, &listed), None, "{allowed}");
        }
        assert_eq!(refused("127.0.0.2", &listed), Some(Forbidden::Loopback));
        assert_eq!(refused("192.168.0.1", &listed), Some(Forbidden::Private));
        assert_eq!(
            refused("169.254.169.254", &listed),
            Some(Forbidden::Metadata)
        );
        let everything = policy("", "0.0.0.0/0, ::/0");
        assert_eq!(
            refused("169.254.169.254", &everything),
            Some(Forbidden::Metadata)
        );
        assert_eq!(refused("192.168.0.1", &everything), None);
        let exact = policy("", "169.254.169.254/32");
        assert_eq!(refused("169.254.169.254", &exact), None);
    }

    #[test]
    fn blocked_messages_name_the_rule_not_the_address() {
        let error = check_addr(ip("10.0.0.5"), &EgressPolicy::default()).err();
        assert_eq!(
            error.map(|e| e.to_string()).as_deref(),
            Some(
                "the upstream address is in a private range; add it to STRONGROOM_EGRESS_ALLOW_NETWORKS to allow it"
            )
        );
        let error = check_addr(ip("169.254.169.254"), &EgressPolicy::default()).err();
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("cloud metadata") && !message.contains("169.254"));
    }

    #[test]
    fn validates_base_urls() {
        let none = EgressPolicy::default();
        let ok =
            |raw: &str, policy: &EgressPolicy| validate_base_url(raw, policy).map(String::from);
        assert_eq!(
            ok("https://api.stripe.com", &none).as_deref(),
            Ok("https://api.stripe.com/")
        );
        assert_eq!(
            ok("https://api.stripe.com/", &none).as_deref(),
            Ok("https://api.stripe.com/")
        );
        assert_eq!(
            ok("https://h.example/v1/", &none).as_deref(),
            Ok("https://h.example/v1")
        );
        assert_eq!(
            ok("https://h.example:8443/a/b", &none).as_deref(),
            Ok("https://h.example:8443/a/b")
        );
        assert_eq!(
            ok("https://8.8.8.8/x", &none).as_deref(),
            Ok("https://8.8.8.8/x")
        );
        let cases = [
            ("api.stripe.com", EgressError::NotAbsolute),
            ("/v1/charges", EgressError::NotAbsolute),
            ("http://api.stripe.com", EgressError::Scheme),
            ("ftp://api.stripe.com", EgressError::Scheme),
            ("file:///etc/passwd", EgressError::Scheme),
            ("https://user:pw@api.stripe.com", EgressError::Userinfo),
            ("https://user@api.stripe.com", EgressError::Userinfo),
            ("https://api.stripe.com/?a=1", EgressError::Query),
            ("https://api.stripe.com/?", EgressError::Query),
            ("https://api.stripe.com/#f", EgressError::Fragment),
        ];
        for (raw, expected) in cases {
            assert_eq!(validate_base_url(raw, &none), Err(expected), "{raw}");
        }
        // IP literals are checked now, in every spelling the URL parser accepts.
        for raw in [
            "https://127.0.0.1/",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://2130706433/",
            "https://0x7f.1/",
            "https://0177.0.0.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.1/",
        ] {
            assert!(
                matches!(
                    validate_base_url(raw, &none),
                    Err(EgressError::Blocked { .. })
                ),
                "{raw}"
            );
        }
    }

    #[test]
    fn http_only_for_listed_hosts() {
        let local = policy(
            "localhost, [::1], Internal.Example.",
            "127.0.0.1/32, ::1/128",
        );
        let ok = |raw: &str| validate_base_url(raw, &local).is_ok();
        assert!(ok("http://localhost:8080/api"));
        assert!(ok("http://LOCALHOST./"));
        assert!(ok("http://[::1]:9000/"));
        assert!(ok("http://internal.example/"));
        assert!(!ok("http://127.0.0.1/"), "not listed for http");
        assert!(!ok("http://other.example/"));
        // Listing a host for http does not allow its address.
        let http_only = policy("10.0.0.1", "");
        assert!(matches!(
            validate_base_url("http://10.0.0.1/", &http_only),
            Err(EgressError::Blocked { .. })
        ));
    }

    fn base(raw: &str) -> Url {
        validate_base_url(raw, &EgressPolicy::default()).unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn joins_paths_and_queries() {
        let root = base("https://api.stripe.com");
        let v1 = base("https://h.example/v1/");
        let join = |base: &Url, path: &str, query: Option<&str>| {
            join_path(base, path, query).map(String::from)
        };
        let cases = [
            (
                &root,
                "/v1/charges",
                None,
                "https://api.stripe.com/v1/charges",
            ),
            (
                &root,
                "v1/charges",
                Some("expand[]=x&a=%20b"),
                "https://api.stripe.com/v1/charges?expand[]=x&a=%20b",
            ),
            (&root, "", None, "https://api.stripe.com/"),
            (&root, "/", Some(""), "https://api.stripe.com/"),
            (&v1, "", None, "https://h.example/v1"),
            (&v1, "customers/", None, "https://h.example/v1/customers/"),
            (
                &v1,
                "/a%20b/c%C3%A9/x:batchGet",
                None,
                "https://h.example/v1/a%20b/c%C3%A9/x:batchGet",
            ),
            (
                &v1,
                "files/report.v2.pdf",
                None,
                "https://h.example/v1/files/report.v2.pdf",
            ),
            (&v1, "a/.../b", None, "https://h.example/v1/a/.../b"),
            (
                &v1,
                "it's(1)*!$,;=~-_",
                None,
                "https://h.example/v1/it's(1)*!$,;=~-_",
            ),
        ];
        for (base, path, query, expected) in cases {
            assert_eq!(join(base, path, query).as_deref(), Ok(expected), "{path}");
        }
    }

    #[test]
    fn refuses_path_tricks() {
        let v1 = base("https://h.example/v1");
        let cases = [
            ("..", PathRule::DotSegment),
            ("../admin", PathRule::DotSegment),
            ("a/../../admin", PathRule::DotSegment),
            ("./a", PathRule::DotSegment),
            ("a/.", PathRule::DotSegment),
            ("%2e%2e/admin", PathRule::DotSegment),
            ("%2E%2E/admin", PathRule::DotSegment),
            ("%2E./admin", PathRule::DotSegment),
            (".%2e/admin", PathRule::DotSegment),
            ("%2e/admin", PathRule::DotSegment),
            ("%252e%252e/admin", PathRule::DotSegment),
            ("%25252e%25252e/admin", PathRule::DotSegment),
            ("%25252E./admin", PathRule::DotSegment),
            ("..;/admin", PathRule::DotSegment),
            ("..;jsessionid=1/admin", PathRule::DotSegment),
            ("a%2f..%2fadmin", PathRule::EncodedSeparator),
            ("a%2F..", PathRule::EncodedSeparator),
            ("a%5c..%5cadmin", PathRule::EncodedSeparator),
            ("a%255c", PathRule::EncodedSeparator),
            ("a%25252fb", PathRule::EncodedSeparator),
            ("a%25255cb", PathRule::EncodedSeparator),
            ("a%00b", PathRule::EncodedSeparator),
            ("a%0d%0aHost:%20evil", PathRule::EncodedSeparator),
            ("a\\..\\admin", PathRule::Character),
            ("//evil.com/x", PathRule::EmptySegment),
            ("a//b", PathRule::EmptySegment),
            ("http://evil", PathRule::EmptySegment),
            ("@evil.com", PathRule::Character),
            ("a@evil", PathRule::Character),
            ("a b", PathRule::Character),
            ("a\tb", PathRule::Character),
            ("a\u{0}b", PathRule::Character),
            ("a?x=1", PathRule::Character),
            ("a#frag", PathRule::Character),
            ("caf\u{e9}", PathRule::Character),
            ("a%zz", PathRule::Escape),
            ("a%2", PathRule::Escape),
            ("%u002e%u002e", PathRule::Escape),
        ];
        for (path, rule) in cases {
            let result = join_path(&v1, path, None);
            assert_eq!(result, Err(EgressError::Path(rule)), "{path:?}");
            let message = result.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                message.starts_with("the gateway path ")
                    && !message.contains("admin")
                    && !message.contains("evil")
            );
        }
        for query in ["a=1#frag", "a=1 2", "a=\u{e9}", "a=\n"] {
            assert_eq!(
                join_path(&v1, "x", Some(query)),
                Err(EgressError::Path(PathRule::QueryCharacter)),
                "{query:?}"
            );
        }
    }

    #[tokio::test]
    async fn checks_urls_now() {
        let none = EgressPolicy::default();
        let url = |raw: &str| Url::parse(raw).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(matches!(
            check_url_now(&url("http://localhost:1/"), &none).await,
            Err(EgressError::Blocked {
                class: Forbidden::Loopback,
                ..
            })
        ));
        assert!(matches!(
            check_url_now(&url("https://[fd00:ec2::254]/"), &none).await,
            Err(EgressError::Blocked {
                class: Forbidden::Metadata,
                ..
            })
        ));
        assert_eq!(check_url_now(&url("https://1.1.1.1/"), &none).await, Ok(()));
        let local = policy("", "127.0.0.1/32");
        assert_eq!(
            check_url_now(&url("http://localhost:1/"), &local).await,
            Ok(())
        );
        assert_eq!(
            check_url_now(&url("https://does-not-exist.invalid/"), &none).await,
            Err(EgressError::Unresolvable)
        );
    }

    #[tokio::test]
    async fn resolver_filters_addresses() {
        let resolve = |policy: EgressPolicy| async move {
            let name: Name = "localhost"
                .parse()
                .unwrap_or_else(|_| unreachable!("a valid name"));
            GuardedResolver::new(Arc::new(policy))
                .resolve(name)
                .await
                .map(|addrs| addrs.map(|a| a.ip()).collect::<Vec<_>>())
                .map_err(|e| e.to_string())
        };
        let refused = resolve(EgressPolicy::default()).await;
        assert_eq!(
            refused,
            Err("the upstream address is a loopback address; add it to STRONGROOM_EGRESS_ALLOW_NETWORKS to allow it".to_owned())
        );
        let allowed = resolve(policy("", "127.0.0.1/32")).await;
        assert_eq!(allowed, Ok(vec![ip("127.0.0.1")]));
    }

    /// Serves one canned HTTP response per connection on 127.0.0.1; returns the port.
    fn serve(response: &'static str) -> u16 {
        use std::io::{Read, Write};
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| unreachable!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut request = [0; 4096];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(response.as_bytes());
            }
        });
        port
    }

    #[tokio::test]
    async fn client_checks_at_connect_time_and_does_not_follow_redirects() {
        let port = serve(
            "HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/latest\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
        let target = format!("http://localhost:{port}/start");
        let build = |policy: EgressPolicy| {
            client_builder(Arc::new(policy))
                .build()
                .unwrap_or_else(|e| unreachable!("{e}"))
        };
        let blocked = build(EgressPolicy::default()).get(&target).send().await;
        assert!(blocked.is_err_and(|e| e.is_connect()));
        let allowed = build(policy("localhost", "127.0.0.1/32"))
            .get(&target)
            .send()
            .await;
        assert_eq!(allowed.map(|r| r.status().as_u16()).ok(), Some(302));
    }
}
