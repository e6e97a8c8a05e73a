//! Route decoration end to end: configured patterns name spans `METHOD route`, ignored routes
//! vanish from the traces (and are counted), and unmatched paths with unique ids collapse into
//! a bounded set of routes under the default `low-cardinality` mode.

use std::{collections::BTreeSet, time::Duration};

use sonde_e2e::*;

#[test]
fn patterns_ignored_routes_and_low_cardinality() {
    let _guard = serial();
    let dir = TempDir::new("routes");
    let port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    let yaml = "routes:\n  patterns: [\"/user/{id}\"]\n  ignored_patterns: [/health]\n  ignore_mode: traces\n  max_path_segment_cardinality: 5\n";
    let mut sonde =
        Sonde::start_with_config(&dir.path("sonde.yaml"), yaml, port, &dir, server.pid());

    for id in 1..=3 {
        // The test server answers 404 here; the route does not depend on the status.
        assert_eq!(
            HttpConn::open(port).request("GET", &format!("/user/{id}"), None, true),
            404
        );
    }
    for _ in 0..2 {
        HttpConn::open(port).request("GET", "/health", None, true);
    }
    // 20 unique ids in one position: 5 keep their names, then the position collapses.
    let unique = 20;
    for id in 0..unique {
        HttpConn::open(port).request("GET", &format!("/items/i{id}/detail"), None, true);
    }
    let total = 3 + unique;
    let spans = sonde.wait_spans(total, Duration::from_secs(15), |_| true);
    assert_eq!(spans.len(), total, "health checks must not become spans");

    let users: Vec<_> = spans
        .iter()
        .filter(|s| s["path"].as_str().is_some_and(|p| p.starts_with("/user/")))
        .collect();
    assert_eq!(users.len(), 3);
    for s in &users {
        assert_eq!(s["route"], "/user/{id}", "{s}");
        assert_eq!(s["name"], "GET /user/{id}", "{s}");
    }
    let item_routes: Vec<&str> = spans
        .iter()
        .filter(|s| s["path"].as_str().is_some_and(|p| p.starts_with("/items/")))
        .map(|s| s["route"].as_str().expect("route"))
        .collect();
    assert_eq!(item_routes.len(), unique);
    let distinct: BTreeSet<&str> = item_routes.iter().copied().collect();
    assert_eq!(distinct.len(), 6, "{distinct:?}");
    assert!(distinct.contains("/items/*/detail"), "{distinct:?}");
    assert_eq!(
        item_routes
            .iter()
            .filter(|r| **r == "/items/*/detail")
            .count(),
        unique - 5
    );

    assert!(sonde.proc.stop(Duration::from_secs(10)).is_some());
    let stats = final_processor_stats(&sonde);
    assert_eq!(stats["ignored_routes"], 2, "{stats}");
}
