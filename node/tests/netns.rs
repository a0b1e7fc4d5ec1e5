//! Discovery on real network stacks: three `hearthnet run` processes, each in
//! its own network namespace on a bridge (veth pairs), find each other by
//! UDP multicast announces, call across namespaces, drop a node whose link
//! is cut once its manifest goes stale, and take it back when the link
//! returns. Needs root (`ip netns`); where namespaces cannot be created the
//! test says so and runs the same checks on loopback instead.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hearthnet_sdk::identity::SecretKey;

const EXE: &str = env!("CARGO_BIN_EXE_hearthnet");

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Namespaces, bridge and veth pairs; removed on drop.
struct Net {
    tag: String,
    n: usize,
}

impl Net {
    fn ns(&self, i: usize) -> String {
        format!("hn{}n{i}", self.tag)
    }
    fn host_veth(&self, i: usize) -> String {
        format!("hn{}h{i}", self.tag)
    }
    fn bridge(&self) -> String {
        format!("hn{}br", self.tag)
    }
    fn ip(&self, i: usize) -> String {
        format!("10.213.7.{}", i + 1)
    }

    /// Builds the network, or `None` where namespaces cannot be made.
    fn create(n: usize) -> Option<Self> {
        let tag = format!("{}", std::process::id() % 100_000);
        let net = Self { tag, n };
        let br = net.bridge();
        let ok = sh(&["ip", "link", "add", &br, "type", "bridge"])
            && sh(&["ip", "link", "set", &br, "up"]);
        if !ok {
            return None;
        }
        for i in 0..n {
            let (ns, hv, nv) = (net.ns(i), net.host_veth(i), format!("hn{}v{i}", net.tag));
            let addr = format!("{}/24", net.ip(i));
            let steps: Vec<Vec<&str>> = vec![
                vec!["ip", "netns", "add", &ns],
                vec![
                    "ip", "link", "add", &hv, "type", "veth", "peer", "name", &nv,
                ],
                vec!["ip", "link", "set", &hv, "master", &br],
                vec!["ip", "link", "set", &hv, "up"],
                vec!["ip", "link", "set", &nv, "netns", &ns],
                vec!["ip", "-n", &ns, "addr", "add", &addr, "dev", &nv],
                vec!["ip", "-n", &ns, "link", "set", &nv, "up"],
                vec!["ip", "-n", &ns, "link", "set", "lo", "up"],
                vec!["ip", "-n", &ns, "route", "add", "224.0.0.0/4", "dev", &nv],
            ];
            for s in steps {
                if !sh(&s) {
                    return None;
                }
            }
        }
        Some(net)
    }

    fn link(&self, i: usize, up: bool) {
        assert!(sh(&[
            "ip",
            "link",
            "set",
            &self.host_veth(i),
            if up { "up" } else { "down" }
        ]));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.n {
            sh(&["ip", "netns", "del", &self.ns(i)]);
            sh(&["ip", "link", "del", &self.host_veth(i)]);
        }
        sh(&["ip", "link", "del", &self.bridge()]);
    }
}

/// One node process.
struct Node {
    child: Child,
    dir: PathBuf,
    ns: Option<String>,
    url: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn seed(i: usize) -> [u8; 32] {
    [40 + i as u8; 32]
}

fn write_key(dir: &Path, i: usize) {
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("keys/node.key"))
        .unwrap();
    f.write_all(&seed(i)).unwrap();
}

fn command(ns: Option<&str>) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, EXE]);
            c
        }
        None => Command::new(EXE),
    }
}

/// Which discovery mechanism a run uses.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Mdns,
    Udp,
}

fn envs(c: &mut Command, dir: &Path, host: &str, port: u16, root: &str, mode: Mode) {
    c.env("HEARTHNET_DATA_DIR", dir)
        .env("HEARTHNET_CONFIG_DIR", dir)
        .env("HEARTHNET__TRANSPORT__HOST", host)
        .env("HEARTHNET__TRANSPORT__PORT", port.to_string())
        .env("HEARTHNET__COMMUNITY__COMMUNITY_ID", root)
        .env(
            "HEARTHNET__DISCOVERY__MDNS_ENABLED",
            matches!(mode, Mode::Mdns).to_string(),
        )
        .env(
            "HEARTHNET__DISCOVERY__UDP_ENABLED",
            matches!(mode, Mode::Udp).to_string(),
        )
        .env("HEARTHNET__DISCOVERY__REFRESH_SECONDS", "1")
        .env("HEARTHNET__EMERGENCY__ENABLED", "false")
        .env("HEARTHNET__MODELS__ENABLED", "false")
        .env("HEARTHNET__DISCOVERY__PRUNE_SECONDS", "4")
        .env("RUST_LOG", "warn");
}

fn start(i: usize, base: &Path, net: Option<&Net>, root: &str, mode: Mode) -> Node {
    let dir = base.join(format!("node{i}"));
    if !dir.join("keys/node.key").exists() {
        write_key(&dir, i);
    }
    let (host, port) = match net {
        Some(n) => (n.ip(i), 7080),
        None => ("127.0.0.1".to_string(), 17_300 + i as u16),
    };
    let ns = net.map(|n| n.ns(i));
    let mut c = command(ns.as_deref());
    envs(&mut c, &dir, &host, port, root, mode);
    let child = c
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Node {
        child,
        dir,
        ns,
        url: format!("http://{host}:{port}"),
    }
}

/// `hearthnet peers` of a node, as NodeIDs.
fn peers(node: &Node, root: &str) -> Vec<String> {
    let mut c = command(node.ns.as_deref());
    envs(&mut c, &node.dir, "127.0.0.1", 1, root, Mode::Udp);
    let out = c.args(["peers", "--node", &node.url]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("ed25519:"))
        .map(|l| l.split('\t').next().unwrap_or_default().to_string())
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within {limit:?}");
}

fn scenario(net: Option<&Net>, mode: Mode) {
    let base = tempfile::tempdir().unwrap();
    let root = SecretKey::from_seed(seed(0)).node_id().to_string();
    let ids: Vec<String> = (0..3)
        .map(|i| SecretKey::from_seed(seed(i)).node_id().to_string())
        .collect();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| start(i, base.path(), net, &root, mode))
        .collect();
    // All three find each other (mDNS: within 5 s).
    let limit = match mode {
        Mode::Mdns => Duration::from_secs(5),
        Mode::Udp => Duration::from_secs(20),
    };
    let took = wait_for("three nodes discover each other", limit, || {
        nodes.iter().all(|n| peers(n, &root).len() == 2)
    });
    eprintln!("discovery ({mode:?}): all three saw both others after {took:?}");
    for (i, n) in nodes.iter().enumerate() {
        let p = peers(n, &root);
        for (j, id) in ids.iter().enumerate() {
            assert_eq!(p.contains(id), i != j, "node {i} peers {p:?}");
        }
    }
    // A call crosses namespaces: node 0's CLI (signed with its key) calls node 1.
    let mut c = command(nodes[0].ns.as_deref());
    envs(&mut c, &nodes[0].dir, "127.0.0.1", 1, &root, mode);
    let out = c
        .args(["call", "--node", &nodes[1].url, "protocol.describe"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("event.sync.heads"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    if let Some(net) = net {
        // Cut node 2's link: the others prune it; restore: it comes back.
        net.link(2, false);
        wait_for(
            "node 2 pruned after its link is cut",
            Duration::from_secs(30),
            || {
                peers(&nodes[0], &root) == vec![ids[1].clone()]
                    && peers(&nodes[1], &root) == vec![ids[0].clone()]
            },
        );
        net.link(2, true);
        wait_for(
            "node 2 back after its link returns",
            Duration::from_secs(30),
            || nodes.iter().all(|n| peers(n, &root).len() == 2),
        );
    } else {
        // Stop node 2 instead of cutting a link.
        drop(nodes.pop());
        wait_for(
            "node 2 pruned after it stops",
            Duration::from_secs(30),
            || peers(&nodes[0], &root) == vec![ids[1].clone()],
        );
        nodes.push(start(2, base.path(), None, &root, mode));
        wait_for(
            "node 2 back after it restarts",
            Duration::from_secs(30),
            || nodes.iter().all(|n| peers(n, &root).len() == 2),
        );
    }
}

fn run(mode: Mode) {
    match Net::create(3) {
        Some(net) => {
            eprintln!("network namespaces: yes (bridge {})", net.bridge());
            scenario(Some(&net), mode);
        }
        None => {
            eprintln!(
                "NOTICE: network namespaces cannot be created here (needs root and `ip`); \
                 running the loopback variant of the discovery tests instead"
            );
            scenario(None, mode);
        }
    }
}

#[test]
fn three_nodes_discover_each_other_by_mdns_across_namespaces() {
    run(Mode::Mdns);
}

#[test]
fn three_nodes_discover_each_other_by_udp_across_namespaces() {
    run(Mode::Udp);
}

/// Discovery times over repeated starts, for `docs/benchmarks.md`:
/// `cargo nextest run -p hearthnet --test netns --run-ignored only --no-capture`.
#[test]
#[ignore = "measurement, run by hand"]
fn discovery_times_over_ten_starts() {
    for mode in [Mode::Mdns, Mode::Udp] {
        discovery_times(mode);
    }
}

fn discovery_times(mode: Mode) {
    let Some(net) = Net::create(3) else {
        eprintln!("NOTICE: network namespaces cannot be created here");
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let root = SecretKey::from_seed(seed(0)).node_id().to_string();
    let mut times = Vec::new();
    for _ in 0..10 {
        let nodes: Vec<Node> = (0..3)
            .map(|i| start(i, base.path(), Some(&net), &root, mode))
            .collect();
        let took = wait_for("discovery", Duration::from_secs(30), || {
            nodes.iter().all(|n| peers(n, &root).len() == 2)
        });
        times.push(took.as_secs_f64());
        drop(nodes);
        std::thread::sleep(Duration::from_millis(300));
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{mode:?} discovery, 3 nodes in namespaces, from the first start until all see both others: median {:.2} s, max {:.2} s, all {times:?}",
        (times[4] + times[5]) / 2.0,
        times[9]
    );
}
