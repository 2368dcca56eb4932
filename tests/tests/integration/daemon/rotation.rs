//! Rotating the cluster secret without downtime (SECURITY.md's procedure),
//! with `halo reload` on each node in turn: no peer is ever declared down,
//! no module changes state, and once the old secret is dropped, a node
//! still on it alone is refused.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    process::{Command, Output},
    time::Duration,
};

use halo::api::NodeStatus;
use halo_tests::{
    cluster::{halo_bin, module_in, peer_up, Cluster, Timing, CONFIG_PATH},
    lab::{self, Lab, LabBuilder},
};

/// How long a converging cluster, or a counter reaching the API (published
/// once a second), may take: a hang-catcher, not a measurement.
const CONVERGE: Duration = Duration::from_secs(10);

const OLD: &str = "/etc/halo/cluster.key";
const NEW: &str = "/etc/halo/next.key";

/// A farm module with no scripts: it reaches UP as soon as it starts.
fn farm_module() -> String {
    format!(
        "[[module]]\nname = \"web\"\nkind = \"farm\"\ninterface = \"eth0\"\nvips = [\"{}\"]\n\n\
         [[module.rule]]\nproto = \"tcp\"\nport = 80\n",
        lab::lab_ipv4(201)
    )
}

/// Rewrites `node`'s `[cluster]` secret keys: signing with `signing`,
/// accepting `accepted` too when given.
fn set_secrets(lab: &Lab, node: &str, signing: &str, accepted: Option<&str>) {
    let path = lab.host(node).outside_path(CONFIG_PATH);
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: String = text
        .lines()
        .filter(|line| !line.starts_with("secret_file") && !line.starts_with("accept_secret_file"))
        .map(|line| format!("{line}\n"))
        .collect();
    let mut keys = format!("secret_file = \"{signing}\"\n");
    if let Some(accepted) = accepted {
        keys.push_str(&format!("accept_secret_file = \"{accepted}\"\n"));
    }
    let text = kept.replacen("[cluster]\n", &format!("[cluster]\n{keys}"), 1);
    assert!(text.contains(&keys), "no [cluster] table in {text}");
    std::fs::write(&path, text).unwrap();
}

/// `halo reload` on `node`: must apply the secrets and refuse nothing.
fn reload(cluster: &Cluster, node: &str) {
    let output: Output = cluster.cli(node, &["reload"]).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("applied: cluster secrets re-read"),
        "expected halo reload on {node} to apply the secrets and refuse nothing, saw {}: {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Frames `node` accepted from `peer` under its accepted (not signing) secret.
fn accepted_secret(status: &NodeStatus, peer: &str) -> u64 {
    status
        .heartbeat
        .links
        .iter()
        .filter(|l| l.peer == peer)
        .map(|l| l.accepted_secret)
        .sum()
}

fn forged(status: &NodeStatus) -> u64 {
    status
        .heartbeat
        .rejected
        .get("forged")
        .copied()
        .unwrap_or(0)
}

fn transitions(status: &NodeStatus) -> String {
    format!("{:?}", status.modules[0].counters.transitions)
}

/// Waits until `node`'s count of frames from `peer` under the accepted
/// secret holds still over two publications (the sender signs with this
/// node's signing secret), and returns it.
fn wait_accepted_secret_still(cluster: &Cluster, node: &str, peer: &str) -> u64 {
    let mut last = None;
    lab::wait_until(
        CONVERGE,
        &format!("{node} no longer hears {peer} under its accepted secret"),
        || {
            let now = accepted_secret(&cluster.status(node)?, peer);
            let still = last == Some(now);
            last = Some(now);
            if !still {
                std::thread::sleep(Duration::from_millis(1200));
            }
            Ok(still)
        },
    )
    .unwrap();
    last.unwrap()
}

#[test]
fn the_cluster_secret_rotates_with_reloads_and_no_peer_or_module_notices() {
    let lab = LabBuilder::new("rotation")
        .hosts(&["a", "b"])
        .build()
        .unwrap();
    let mut cluster =
        Cluster::configure(&lab, &["a", "b"], 1, Timing::default(), &farm_module()).unwrap();
    cluster.start_all().unwrap();
    let settled = |peer: &'static str| {
        move |s: &NodeStatus| {
            peer_up(s, peer)
                && module_in(s, "web", "UP", "ready")
                && s.heartbeat
                    .links
                    .iter()
                    .any(|l| l.peer == peer && l.accepted > 0)
        }
    };
    let before_a = cluster
        .wait_status("a", CONVERGE, "b up, web UP on a", settled("b"))
        .unwrap();
    let before_b = cluster
        .wait_status("b", CONVERGE, "a up, web UP on b", settled("a"))
        .unwrap();

    // 1. A new secret, on every node, accepted beside the old one.
    let output = lab
        .host("a")
        .run(Command::new(halo_bin()).args(["keygen", NEW]))
        .unwrap();
    assert!(output.status.success(), "halo keygen: {output:?}");
    let new_key = std::fs::read(lab.host("a").outside_path(NEW)).unwrap();
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(lab.host("b").outside_path(NEW))
            .unwrap();
        file.write_all(&new_key).unwrap();
    }
    for node in ["a", "b"] {
        set_secrets(&lab, node, OLD, Some(NEW));
        reload(&cluster, node);
    }

    // 2. Switch: each node signs with the new secret, still accepting the
    // old one. Once a switched, b hears it under b's accepted secret.
    set_secrets(&lab, "a", NEW, Some(OLD));
    reload(&cluster, "a");
    cluster
        .wait_status("b", CONVERGE, "b hears a under the new secret", |s| {
            accepted_secret(s, "a") > 0
        })
        .unwrap();
    set_secrets(&lab, "b", NEW, Some(OLD));
    reload(&cluster, "b");
    // The counters stop growing on both: every peer signs with the new secret.
    let on_a = wait_accepted_secret_still(&cluster, "a", "b");
    let on_b = wait_accepted_secret_still(&cluster, "b", "a");
    assert!(on_a > 0, "a heard b under the old secret before b switched");

    // 3. Drop the old secret everywhere.
    for node in ["a", "b"] {
        set_secrets(&lab, node, NEW, None);
        reload(&cluster, node);
    }
    let after_a = cluster
        .wait_status("a", CONVERGE, "a settled", settled("b"))
        .unwrap();
    let after_b = cluster
        .wait_status("b", CONVERGE, "b settled", settled("a"))
        .unwrap();
    assert_eq!(
        accepted_secret(&after_a, "b"),
        on_a,
        "no frame under the old secret after the switch"
    );
    assert_eq!(
        accepted_secret(&after_b, "a"),
        on_b,
        "no frame under the old secret after the switch"
    );
    for (node, before, after) in [("a", &before_a, &after_a), ("b", &before_b, &after_b)] {
        assert_eq!(
            forged(after),
            forged(before),
            "{node} refused a frame during the rotation"
        );
        assert_eq!(
            transitions(after),
            transitions(before),
            "the module changed state on {node} during the rotation"
        );
        let log = cluster.log(node).unwrap();
        assert!(
            !log.contains("peer down"),
            "{node} declared its peer down during the rotation:\n{log}"
        );
    }

    // A node still holding only the old secret is refused from now on.
    set_secrets(&lab, "b", OLD, None);
    reload(&cluster, "b");
    cluster
        .wait_status(
            "a",
            CONVERGE,
            "b's old-secret frames refused as forged, b down",
            |s| forged(s) > forged(&after_a) && !peer_up(s, "b"),
        )
        .unwrap();
}
