//! Route decoration: turns a request path into the low-cardinality `http.route` that names
//! spans and will key metrics, however wild the URLs are. Configured routes (`/user/{id}`,
//! `/api/v1/items/:id`, `/static/*`) win; ignored routes are flagged; any other path is
//! handled by the `unmatched` mode. The default, `low-cardinality`, learns each service's
//! path tree and collapses a segment into `*` once it has seen more than
//! `max_path_segment_cardinality` distinct values at that position, so the number of routes
//! stays bounded whatever the traffic (the tree's size is bounded too).

use std::collections::HashMap;

use crate::config::{RouteIgnoreMode, RoutesConfig, UnmatchedRoutes};

/// Most nodes one service's learned tree may hold; past it, new segments become `*`.
const MAX_NODES_PER_SERVICE: usize = 10_000;
/// Deeper segments than this are folded into one trailing `*`.
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}` or `:name`: exactly one segment.
    Param,
    /// `*` as the last segment: the rest of the path, possibly empty.
    Rest,
}

/// One configured pattern.
#[derive(Debug, Clone)]
struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

impl Pattern {
    fn parse(text: &str) -> Pattern {
        let segments = split(text)
            .map(|s| {
                if s == "*" {
                    Segment::Rest
                } else if s.starts_with(':') || (s.starts_with('{') && s.ends_with('}')) {
                    Segment::Param
                } else {
                    Segment::Literal(s.to_string())
                }
            })
            .collect();
        Pattern {
            text: text.to_string(),
            segments,
        }
    }

    fn matches(&self, path: &str) -> bool {
        let mut parts = split(path);
        for seg in &self.segments {
            match seg {
                Segment::Rest => return true,
                Segment::Param => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

/// Non-empty path segments (`//a/b/` is `a`, `b`).
fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// What the router decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// `http.route`; None in `unset` mode for unmatched paths.
    pub route: Option<String>,
    /// Set when the path matched an ignored pattern: where it is to be dropped.
    pub ignored: Option<RouteIgnoreMode>,
}

/// A learned path tree of one service (low-cardinality mode); node 0 is the root.
#[derive(Debug)]
struct Tree {
    nodes: Vec<Node>,
}

impl Default for Tree {
    fn default() -> Tree {
        Tree {
            nodes: vec![Node::default()],
        }
    }
}

/// Path segments come from traffic: a seeded hash (collisions cannot be chosen from
/// outside), and a cheaper one than SipHash, as it runs per segment of every request.
type SegmentMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
struct Node {
    children: SegmentMap<usize>,
    /// Set once the node had too many distinct children: every segment here is `*`.
    collapsed: Option<usize>,
}

impl Tree {
    fn add_node(&mut self) -> Option<usize> {
        if self.nodes.len() >= MAX_NODES_PER_SERVICE {
            return None;
        }
        self.nodes.push(Node::default());
        Some(self.nodes.len() - 1)
    }

    /// Writes the route of `path` into the empty `route`, learning it.
    fn route(&mut self, path: &str, max_children: usize, wildcard: &str, route: &mut String) {
        let mut node = 0;
        for (depth, seg) in split(path).enumerate() {
            route.push('/');
            if depth >= MAX_DEPTH {
                route.push_str(wildcard);
                break;
            }
            if let Some(next) = self.nodes[node].collapsed {
                route.push_str(wildcard);
                node = next;
                continue;
            }
            if let Some(&next) = self.nodes[node].children.get(seg) {
                route.push_str(seg);
                node = next;
                continue;
            }
            if self.nodes[node].children.len() >= max_children {
                // Too many distinct values here: from now on this position is `*`.
                match self.add_node() {
                    Some(next) => {
                        self.nodes[node].collapsed = Some(next);
                        self.nodes[node].children.clear();
                        node = next;
                    }
                    None => {
                        route.push_str(wildcard);
                        break;
                    }
                }
                route.push_str(wildcard);
                continue;
            }
            match self.add_node() {
                Some(next) => {
                    self.nodes[node].children.insert(seg.to_string(), next);
                    route.push_str(seg);
                    node = next;
                }
                None => {
                    route.push_str(wildcard);
                    break;
                }
            }
        }
        if route.is_empty() {
            route.push('/');
        }
    }
}

/// True for a segment that looks like an identifier rather than a name: it holds a digit
/// (numbers, UUIDs, hashes, dates, versioned ids). Used by the `heuristic` mode.
fn looks_like_id(seg: &str) -> bool {
    seg.bytes().any(|b| b.is_ascii_digit())
}

/// `buf` emptied for a route of about `len` bytes: a buffer with room kept (cleared), else a
/// new one with that capacity, made only by a mode that writes a route (growing an empty
/// buffer by pushes would reallocate).
fn ready(mut buf: String, len: usize) -> String {
    if buf.capacity() == 0 {
        return String::with_capacity(len);
    }
    buf.clear();
    buf
}

/// The route decorator of the processor.
pub struct Router {
    patterns: Vec<Pattern>,
    ignored: Vec<Pattern>,
    ignore_mode: RouteIgnoreMode,
    unmatched: UnmatchedRoutes,
    wildcard: String,
    max_children: usize,
    trees: SegmentMap<Tree>,
}

impl Router {
    pub fn new(config: &RoutesConfig) -> Router {
        Router {
            patterns: config.patterns.iter().map(|p| Pattern::parse(p)).collect(),
            ignored: config
                .ignored_patterns
                .iter()
                .map(|p| Pattern::parse(p))
                .collect(),
            ignore_mode: config.ignore_mode,
            unmatched: config.unmatched,
            wildcard: config.wildcard_char.clone(),
            max_children: config.max_path_segment_cardinality as usize,
            trees: SegmentMap::default(),
        }
    }

    /// The route of `path` for `service`.
    pub fn route(&mut self, service: &str, path: &str) -> Routed {
        self.route_in(service, path, String::new())
    }

    /// `route`, writing the route into `buf` (cleared first) rather than a new `String`: a
    /// caller that gets its route back when done (`SpanSink`, for spans only the metrics read)
    /// routes a request without an allocation once it holds a buffer.
    pub fn route_in(&mut self, service: &str, path: &str, buf: String) -> Routed {
        let ignored = self
            .ignored
            .iter()
            .any(|p| p.matches(path))
            .then_some(self.ignore_mode);
        if let Some(p) = self.patterns.iter().find(|p| p.matches(path)) {
            let mut buf = ready(buf, p.text.len());
            buf.push_str(&p.text);
            return Routed {
                route: Some(buf),
                ignored,
            };
        }
        let route = match self.unmatched {
            UnmatchedRoutes::Unset => None,
            UnmatchedRoutes::Path => {
                let mut buf = ready(buf, path.len());
                buf.push_str(path);
                Some(buf)
            }
            UnmatchedRoutes::Wildcard => {
                let mut buf = ready(buf, 1 + 2 * self.wildcard.len());
                buf.push('/');
                buf.push_str(&self.wildcard);
                buf.push_str(&self.wildcard);
                Some(buf)
            }
            UnmatchedRoutes::Heuristic => {
                let mut buf = ready(buf, path.len().max(1));
                for s in split(path) {
                    buf.push('/');
                    buf.push_str(if looks_like_id(s) { &self.wildcard } else { s });
                }
                if buf.is_empty() {
                    buf.push('/');
                }
                Some(buf)
            }
            UnmatchedRoutes::LowCardinality => {
                let tree = match self.trees.get_mut(service) {
                    Some(t) => t,
                    None => self.trees.entry(service.to_string()).or_default(),
                };
                let mut buf = ready(buf, path.len().max(1));
                tree.route(path, self.max_children, &self.wildcard, &mut buf);
                Some(buf)
            }
        };
        Routed { route, ignored }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(unmatched: UnmatchedRoutes) -> RoutesConfig {
        RoutesConfig {
            patterns: vec![
                "/user/{id}".into(),
                "/api/v1/items/:id".into(),
                "/static/*".into(),
            ],
            ignored_patterns: vec!["/health".into(), "/metrics/*".into()],
            ignore_mode: RouteIgnoreMode::Traces,
            unmatched,
            wildcard_char: "*".into(),
            max_path_segment_cardinality: 3,
        }
    }

    fn route(r: &mut Router, path: &str) -> Option<String> {
        r.route("svc", path).route
    }

    #[test]
    fn patterns_match_params_and_rest() {
        let mut r = Router::new(&config(UnmatchedRoutes::Unset));
        assert_eq!(route(&mut r, "/user/42").as_deref(), Some("/user/{id}"));
        assert_eq!(route(&mut r, "/user/42/").as_deref(), Some("/user/{id}"));
        assert_eq!(route(&mut r, "/user/42/posts"), None);
        assert_eq!(route(&mut r, "/user"), None);
        assert_eq!(
            route(&mut r, "/api/v1/items/abc").as_deref(),
            Some("/api/v1/items/:id")
        );
        assert_eq!(route(&mut r, "/static").as_deref(), Some("/static/*"));
        assert_eq!(
            route(&mut r, "/static/a/b.css").as_deref(),
            Some("/static/*")
        );
        assert_eq!(route(&mut r, "/other"), None);
    }

    #[test]
    fn ignored_patterns_are_flagged_with_the_mode() {
        let mut r = Router::new(&config(UnmatchedRoutes::Path));
        let h = r.route("svc", "/health");
        assert_eq!(h.ignored, Some(RouteIgnoreMode::Traces));
        assert_eq!(h.route.as_deref(), Some("/health"));
        assert_eq!(
            r.route("svc", "/metrics/x").ignored,
            Some(RouteIgnoreMode::Traces)
        );
        assert_eq!(r.route("svc", "/healthz").ignored, None);
    }

    #[test]
    fn a_reused_buffer_routes_as_a_new_one_in_every_mode() {
        let paths = [
            "/orders/12345/lines/9f86d081884c7d65",
            "/user/7",
            "/",
            "",
            "//a//b1/",
        ];
        for mode in [
            UnmatchedRoutes::Unset,
            UnmatchedRoutes::Path,
            UnmatchedRoutes::Wildcard,
            UnmatchedRoutes::Heuristic,
            UnmatchedRoutes::LowCardinality,
        ] {
            let (mut fresh, mut reused) = (Router::new(&config(mode)), Router::new(&config(mode)));
            let mut buf = String::from("left over from a longer route than any here");
            for path in paths {
                let want = fresh.route("svc", path);
                let got = reused.route_in("svc", path, buf);
                assert_eq!(got, want, "{mode:?} {path:?}");
                buf = got.route.unwrap_or_else(|| "junk".into());
            }
        }
    }

    #[test]
    fn unmatched_modes() {
        let path = "/orders/12345/lines/9f86d081884c7d65";
        let mut r = Router::new(&config(UnmatchedRoutes::Path));
        assert_eq!(route(&mut r, path).as_deref(), Some(path));
        let mut r = Router::new(&config(UnmatchedRoutes::Wildcard));
        assert_eq!(route(&mut r, path).as_deref(), Some("/**"));
        let mut r = Router::new(&config(UnmatchedRoutes::Heuristic));
        assert_eq!(route(&mut r, path).as_deref(), Some("/orders/*/lines/*"));
        assert_eq!(route(&mut r, "/").as_deref(), Some("/"));
    }

    #[test]
    fn low_cardinality_collapses_a_position_past_the_limit() {
        let mut r = Router::new(&config(UnmatchedRoutes::LowCardinality));
        // Three distinct values fit (limit 3) and keep their names.
        for id in ["a", "b", "c"] {
            assert_eq!(
                route(&mut r, &format!("/orders/{id}/lines")).as_deref(),
                Some(format!("/orders/{id}/lines").as_str())
            );
        }
        // The fourth collapses the position; every value there is `*` from now on.
        assert_eq!(
            route(&mut r, "/orders/d/lines").as_deref(),
            Some("/orders/*/lines")
        );
        assert_eq!(
            route(&mut r, "/orders/a/lines").as_deref(),
            Some("/orders/*/lines")
        );
        // Other services learn their own tree.
        assert_eq!(
            r.route("other", "/orders/d/lines").route.as_deref(),
            Some("/orders/d/lines")
        );
    }

    #[test]
    fn low_cardinality_stays_bounded_under_unique_ids() {
        let mut r = Router::new(&config(UnmatchedRoutes::LowCardinality));
        let mut routes = std::collections::BTreeSet::new();
        for i in 0..10_000 {
            routes.insert(route(&mut r, &format!("/users/{i}/profile")).unwrap_or_default());
            routes.insert(
                route(&mut r, &format!("/x{}/y{}/z{}", i % 7, i, i * 3)).unwrap_or_default(),
            );
        }
        // At most limit+1 values per position and a bounded tree.
        assert!(routes.len() <= 20, "{} routes: {routes:?}", routes.len());
        assert!(r.trees["svc"].nodes.len() <= MAX_NODES_PER_SERVICE);
        // Very deep paths fold into one trailing wildcard.
        let deep = "/a".repeat(40);
        assert!(route(&mut r, &deep).unwrap_or_default().ends_with("/*"));
    }
}
