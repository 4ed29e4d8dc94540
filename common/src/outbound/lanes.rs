//! An agent's way to its provider, and the connections its HTTP/2 calls are spread over.
//!
//! A client's pool (hyper's) puts every HTTP/2 request to a host on one connection, and a
//! server limits the streams open at once on a connection (hosted providers to 100–250). The
//! calls beyond that limit would wait inside the pool for a stream, holding their call slot,
//! their timeout running: with a limit of 100, a replica with a concurrency of 1,000 ran 100
//! calls at a time. So an agent that may speak HTTP/2 gets lanes, each a connection of its own
//! ([`lean_http2`](super::lean_http2)), and a call takes the first lane with a stream free. A
//! lane keeps a reqwest client, made when first needed, for what its connection leaves (a
//! redirect, a proxy, a server that chose HTTP/1.1).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use url::Url;

use super::lean_http2::{Connection, Dial};
use super::ExtraRoots;
use crate::config::HttpVersion;

/// How one agent's calls reach its provider: the HTTP version, and the lanes when its calls
/// may share HTTP/2 connections.
pub struct ProviderRoute {
    pub(super) version: HttpVersion,
    /// `None`: HTTP/1.1 only, over the outbound's shared clients.
    pub(super) lanes: Option<Lanes>,
}

impl std::fmt::Debug for ProviderRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderRoute")
            .field("version", &self.version)
            .field("lanes", &self.lanes.as_ref().map_or(0, Lanes::len))
            .finish()
    }
}

/// The settings a route is made from.
#[derive(Debug, Clone, Copy)]
pub struct RouteSettings<'a> {
    pub version: HttpVersion,
    pub base_url: &'a Url,
    /// The agent's calls in flight per replica.
    pub concurrency: u16,
    /// Calls one HTTP/2 connection carries.
    pub streams_per_connection: u32,
    /// Certificate authorities the lanes trust besides the public roots.
    pub extra_roots: &'a ExtraRoots,
}

impl ProviderRoute {
    pub fn new(settings: RouteSettings<'_>) -> Self {
        let RouteSettings {
            version,
            base_url,
            concurrency,
            streams_per_connection,
            extra_roots,
        } = settings;
        let may_speak_http2 = match version {
            HttpVersion::Http2 => true,
            // ALPN offers HTTP/2 over TLS only.
            HttpVersion::Auto => base_url.scheme() == "https",
            HttpVersion::Http1 => false,
        };
        let streams = usize::try_from(streams_per_connection.max(1)).unwrap_or(usize::MAX);
        let lanes = may_speak_http2.then(|| {
            let count = usize::from(concurrency).div_ceil(streams).max(1);
            let dial = Dial::new(version, base_url, extra_roots).map(Arc::new);
            let recipe = ClientRecipe {
                version,
                roots: extra_roots.clone(),
            };
            Lanes::new(count, streams, recipe, || dial.clone().map(Connection::new))
        });
        Self { version, lanes }
    }

    /// A route over the shared clients, for tests of the outbound client that speak HTTP/1.1.
    #[cfg(test)]
    pub(super) fn shared(version: HttpVersion) -> Self {
        assert_ne!(version, HttpVersion::Http2, "an HTTP/2 route has lanes");
        Self {
            version,
            lanes: None,
        }
    }

    /// Connections this route spreads its calls over (0: the shared clients').
    pub fn lanes(&self) -> usize {
        self.lanes.as_ref().map_or(0, Lanes::len)
    }
}

/// Clients of one provider, each holding its own connection, and the calls each carries.
pub(super) struct Lanes {
    first: Lane,
    more: Box<[Lane]>,
    /// Calls a lane carries before the next lane is taken.
    streams: usize,
    recipe: ClientRecipe,
}

/// How a lane's reqwest client is made, the first time the lane needs one.
struct ClientRecipe {
    version: HttpVersion,
    roots: ExtraRoots,
}

struct Lane {
    /// For what the connection leaves, and for every call where there is none; made when
    /// first needed (about 20 KB each before it connects: its TLS configuration and roots
    /// are its own).
    client: OnceLock<reqwest::Client>,
    connection: Option<Connection>,
    in_flight: AtomicUsize,
}

impl Lane {
    fn new(connection: Option<Connection>) -> Self {
        Self {
            client: OnceLock::new(),
            connection,
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Counts a call on this lane when it has a stream free.
    fn try_take(&self, streams: usize) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < streams).then_some(n + 1)
            })
            .is_ok()
    }

    fn load(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

impl Lanes {
    /// `count` lanes (at least one), each with the connection `connection` makes.
    fn new(
        count: usize,
        streams: usize,
        recipe: ClientRecipe,
        mut connection: impl FnMut() -> Option<Connection>,
    ) -> Self {
        let first = Lane::new(connection());
        let more = (1..count).map(|_| Lane::new(connection())).collect();
        Self {
            first,
            more,
            streams,
            recipe,
        }
    }

    fn len(&self) -> usize {
        1 + self.more.len()
    }

    fn all(&self) -> impl Iterator<Item = &Lane> {
        std::iter::once(&self.first).chain(self.more.iter())
    }

    /// The first lane with a stream free, so that a light load keeps to one connection;
    /// when every lane is full (more calls than the lanes were sized for), the least loaded,
    /// where the call waits for a stream.
    pub(super) fn take(&self) -> Taken<'_> {
        let lane = match self.all().find(|lane| lane.try_take(self.streams)) {
            Some(lane) => lane,
            None => {
                let lane = self.more.iter().fold(&self.first, |best, lane| {
                    if lane.load() < best.load() {
                        lane
                    } else {
                        best
                    }
                });
                lane.in_flight.fetch_add(1, Ordering::AcqRel);
                lane
            }
        };
        Taken { lane, lanes: self }
    }
}

/// A call on a lane, counted until it is dropped (the response read, or the call given up).
pub(super) struct Taken<'a> {
    lane: &'a Lane,
    lanes: &'a Lanes,
}

impl Taken<'_> {
    pub(super) fn client(&self) -> &reqwest::Client {
        self.lane.client.get_or_init(|| {
            let ClientRecipe { version, roots } = &self.lanes.recipe;
            super::provider_client(*version, roots)
        })
    }

    /// The lane's own HTTP/2 connection, when it has one.
    pub(super) fn connection(&self) -> Option<&Connection> {
        self.lane.connection.as_ref()
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.lane.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes(count: usize, streams: usize) -> Lanes {
        let recipe = ClientRecipe {
            version: HttpVersion::Http2,
            roots: ExtraRoots::default(),
        };
        Lanes::new(count, streams, recipe, || None)
    }

    fn loads(lanes: &Lanes) -> Vec<usize> {
        lanes.all().map(Lane::load).collect()
    }

    #[test]
    fn calls_fill_a_lane_before_the_next() {
        let lanes = lanes(3, 2);
        let taken: Vec<_> = (0..5).map(|_| lanes.take()).collect();
        assert_eq!(loads(&lanes), vec![2, 2, 1]);
        drop(taken);
        assert_eq!(loads(&lanes), vec![0, 0, 0]);
    }

    #[test]
    fn a_lanes_reqwest_client_is_made_only_when_it_is_needed() {
        let lanes = lanes(2, 1);
        assert!(lanes.all().all(|lane| lane.client.get().is_none()));
        let taken = lanes.take();
        let _ = taken.client();
        let made: Vec<_> = lanes
            .all()
            .map(|lane| lane.client.get().is_some())
            .collect();
        assert_eq!(made, vec![true, false]);
    }

    #[test]
    fn a_freed_stream_is_taken_again_first() {
        let lanes = lanes(2, 2);
        let first = lanes.take();
        let _second = lanes.take();
        let _third = lanes.take();
        drop(first);
        let _again = lanes.take();
        assert_eq!(loads(&lanes), vec![2, 1]);
    }

    #[test]
    fn beyond_every_lane_the_least_loaded_takes_the_call() {
        let lanes = lanes(3, 1);
        let _on_each: Vec<_> = (0..3).map(|_| lanes.take()).collect();
        let second_lane = lanes.take();
        assert_eq!(loads(&lanes), vec![2, 1, 1]);
        let _ = lanes.take();
        assert_eq!(
            loads(&lanes),
            vec![2, 1, 1],
            "a dropped call is no longer counted"
        );
        let _on_the_second = lanes.take();
        let _on_the_third = lanes.take();
        assert_eq!(loads(&lanes), vec![2, 2, 2]);
        drop(second_lane);
        let _again = lanes.take();
        assert_eq!(
            loads(&lanes),
            vec![2, 2, 2],
            "the freed place is taken again"
        );
    }

    fn route(version: HttpVersion, url: &str, concurrency: u16, streams: u32) -> ProviderRoute {
        let base_url = Url::parse(url).expect("url");
        ProviderRoute::new(RouteSettings {
            version,
            base_url: &base_url,
            concurrency,
            streams_per_connection: streams,
            extra_roots: &ExtraRoots::default(),
        })
    }

    #[test]
    fn a_route_has_lanes_for_its_concurrency_where_it_may_speak_http2() {
        assert_eq!(
            route(HttpVersion::Http2, "http://p/v1", 1000, 100).lanes(),
            10
        );
        assert_eq!(
            route(HttpVersion::Http2, "http://p/v1", 1001, 100).lanes(),
            11
        );
        assert_eq!(route(HttpVersion::Http2, "http://p/v1", 4, 100).lanes(), 1);
        assert_eq!(
            route(HttpVersion::Auto, "https://p/v1", 250, 100).lanes(),
            3
        );
        // HTTP/1.1 only: the shared clients.
        assert_eq!(route(HttpVersion::Auto, "http://p/v1", 250, 100).lanes(), 0);
        assert_eq!(
            route(HttpVersion::Http1, "https://p/v1", 250, 100).lanes(),
            0
        );
    }
}
