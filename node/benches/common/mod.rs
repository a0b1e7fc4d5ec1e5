//! Shared set-up of the benchmarks.

use hearthnet_node::config::Config;

/// A node on a free loopback port with its own data directory: no
/// discovery, no internet probes, no local models (turn them on where
/// needed).
pub fn loopback_config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.transport.host = "127.0.0.1".into();
    c.transport.port = 0;
    c.discovery.mdns_enabled = false;
    c.discovery.udp_enabled = false;
    c.emergency.enabled = false;
    c.models.enabled = false;
    c.paths.data_dir = Some(dir.to_path_buf());
    c
}
