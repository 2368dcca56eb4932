//! Rotating the cluster secret without downtime (SECURITY.md's procedure),
//! with `halo reload` on each node in turn: no peer is ever declared down,
//! no module changes state, and once the old secret is dropped, a node
//! still on it alone is refused. A mirror module replicates throughout:
//! its session keeps running while both secrets are accepted, and the one
//! keyed from the old secret ends once that secret is dropped, to connect
//! again under the new one.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    process::{Command, Output},
    time::Duration,
};

use halo::api::NodeStatus;
use halo_tests::{
    cluster::{halo_bin, module_in, peer_up, Cluster, Timing, CONFIG_PATH, STATE_DIR},
    lab::{self, Lab, LabBuilder, Signal},
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

/// Writes a new secret with `halo keygen` on `from` at [`NEW`], and copies
/// it to every host of `to` with mode 0600.
fn share_new_secret(lab: &Lab, from: &str, to: &[&str]) {
    let output = lab
        .host(from)
        .run(Command::new(halo_bin()).args(["keygen", NEW]))
        .unwrap();
    assert!(output.status.success(), "halo keygen: {output:?}");
    let new_key = std::fs::read(lab.host(from).outside_path(NEW)).unwrap();
    for host in to {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(lab.host(host).outside_path(NEW))
            .unwrap();
        file.write_all(&new_key).unwrap();
    }
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
    share_new_secret(&lab, "a", &["b"]);
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

const MIRROR: &str = "db";
/// The mirror's replicated directory (private to each lab host).
const APP_DIR: &str = "/var/lib/app";

/// A mirror of [`APP_DIR`] between n1 and n2, n1 primary, no witness.
fn mirror_module() -> String {
    format!(
        "[[module]]\nname = \"{MIRROR}\"\nkind = \"mirror\"\nnodes = [\"n1\", \"n2\"]\n\
         interface = \"eth0\"\nvip = \"{}\"\ndefaultprim = \"n1\"\n\n\
         [[module.dir]]\npath = \"{APP_DIR}\"\n",
        lab::lab_ipv4(211)
    )
}

/// Waits until n1 is the mirror's PRIM and n2 its SECOND, both ready.
fn wait_paired(cluster: &Cluster) {
    for (node, state) in [("n1", "PRIM"), ("n2", "SECOND")] {
        cluster
            .wait_status(
                node,
                Duration::from_secs(30),
                &format!("{MIRROR} {state} on {node}"),
                |s| module_in(s, MIRROR, state, "ready"),
            )
            .unwrap();
    }
}

/// Writes a file named `step` on the primary and waits until the secondary
/// holds it.
fn replicated(lab: &Lab, step: &str) {
    lab.host("n1")
        .sh(&format!("echo {step} > {APP_DIR}/{step}"))
        .unwrap();
    let copy = lab.host("n2").outside_path(format!("{APP_DIR}/{step}"));
    lab::wait_until(CONVERGE, &format!("{step} replicated to n2"), || {
        Ok(std::fs::read_to_string(&copy).is_ok_and(|text| text == format!("{step}\n")))
    })
    .unwrap();
}

/// The mirror's state changes between two statuses of one node, as
/// `FROM->TO` repeated by count, sorted.
fn transitions_between(before: &NodeStatus, after: &NodeStatus) -> Vec<String> {
    let counted = |status: &NodeStatus, from: &str, to: &str| {
        status.modules[0]
            .counters
            .transitions
            .iter()
            .find(|t| t.from == from && t.to == to)
            .map_or(0, |t| t.count)
    };
    let mut out = Vec::new();
    for t in &after.modules[0].counters.transitions {
        for _ in counted(before, &t.from, &t.to)..t.count {
            out.push(format!("{}->{}", t.from, t.to));
        }
    }
    out.sort();
    out
}

/// How many replication sessions the secondary n2 has started.
fn sessions_of_n2(cluster: &Cluster) -> usize {
    cluster
        .module_log("n2", MIRROR)
        .unwrap()
        .iter()
        .filter(|e| e.source == "replication" && e.text == "connected to the primary")
        .count()
}

#[test]
fn a_mirror_follows_the_rotation_with_reloads_and_rekeys_only_when_the_old_secret_is_dropped() {
    let lab = LabBuilder::new("mirrorrot")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    let mut cluster =
        Cluster::configure(&lab, &["n1", "n2"], 1, Timing::default(), &mirror_module()).unwrap();
    cluster.start_all().unwrap();
    wait_paired(&cluster);
    replicated(&lab, "before");
    let before = [cluster.status("n1").unwrap(), cluster.status("n2").unwrap()];
    assert_eq!(
        sessions_of_n2(&cluster),
        1,
        "one session before the rotation"
    );

    // Steps 1 and 2: the new secret accepted everywhere.
    share_new_secret(&lab, "n1", &["n2"]);
    for node in ["n1", "n2"] {
        set_secrets(&lab, node, OLD, Some(NEW));
        reload(&cluster, node);
        replicated(&lab, &format!("accepting-on-{node}"));
    }
    // Step 3: each node signs with the new secret, one at a time.
    for node in ["n1", "n2"] {
        set_secrets(&lab, node, NEW, Some(OLD));
        reload(&cluster, node);
        replicated(&lab, &format!("switched-on-{node}"));
    }
    let switched = [cluster.status("n1").unwrap(), cluster.status("n2").unwrap()];
    for (node, before, after) in [
        ("n1", &before[0], &switched[0]),
        ("n2", &before[1], &switched[1]),
    ] {
        assert_eq!(
            transitions_between(before, after),
            Vec::<String>::new(),
            "the mirror changed state on {node} while both secrets were accepted"
        );
    }
    assert_eq!(
        sessions_of_n2(&cluster),
        1,
        "the session opened under the old secret runs on while it is accepted"
    );

    // The primary records a sync point every 2 s in sync: with one, the
    // session below resumes from it, as it would on any cluster that ran
    // for a while.
    let sync_point = lab
        .host("n1")
        .outside_path(format!("{STATE_DIR}/mirror/{MIRROR}/sync-point.json"));
    lab::wait_until(CONVERGE, "a sync point on n1", || Ok(sync_point.exists())).unwrap();

    // Step 5 on the primary: its session was keyed from the old secret, so
    // it ends, and the secondary connects again, under the new one. The
    // primary keeps serving (PRIM, ALONE, PRIM), the secondary never serves.
    set_secrets(&lab, "n1", NEW, None);
    reload(&cluster, "n1");
    lab::wait_until(Duration::from_secs(30), "n2 connected again", || {
        Ok(sessions_of_n2(&cluster) == 2)
    })
    .unwrap();
    wait_paired(&cluster);
    replicated(&lab, "dropped-on-n1");
    let rekeyed = [cluster.status("n1").unwrap(), cluster.status("n2").unwrap()];
    assert_eq!(
        transitions_between(&switched[0], &rekeyed[0]),
        ["ALONE->PRIM", "PRIM->ALONE"],
        "the primary kept serving through the new handshake"
    );
    assert_eq!(
        transitions_between(&switched[1], &rekeyed[1]),
        ["SECOND->WAIT", "WAIT->SECOND"],
        "the secondary waited and followed again"
    );
    let log = cluster.log("n1").unwrap();
    assert!(
        log.contains("keyed from a secret no longer accepted"),
        "n1 did not say why its session ended:\n{log}"
    );
    let rejoined = log
        .lines()
        .rev()
        .map(halo_tests::cluster::strip_ansi)
        .find(|l| l.contains("secondary joined"));
    assert!(
        rejoined
            .as_ref()
            .is_some_and(|line| line.contains("incremental=true")),
        "expected the secondary to rejoin with an incremental resync, saw {rejoined:?}"
    );

    // Step 5 on the secondary: the new session is under the new secret
    // both ways, so it runs on.
    set_secrets(&lab, "n2", NEW, None);
    reload(&cluster, "n2");
    replicated(&lab, "dropped-on-n2");
    let dropped = [cluster.status("n1").unwrap(), cluster.status("n2").unwrap()];
    for (node, before, after) in [
        ("n1", &rekeyed[0], &dropped[0]),
        ("n2", &rekeyed[1], &dropped[1]),
    ] {
        assert_eq!(
            transitions_between(before, after),
            Vec::<String>::new(),
            "the mirror changed state on {node}: the session under the new secret ended"
        );
    }
    assert_eq!(sessions_of_n2(&cluster), 2, "no third session");
    for node in ["n1", "n2"] {
        let log = cluster.log(node).unwrap();
        assert!(
            !log.contains("peer down"),
            "{node} declared its peer down during the rotation:\n{log}"
        );
    }

    // The primary, only ever reloaded, takes a secondary that starts with
    // the new secret alone.
    cluster
        .daemon("n2")
        .unwrap()
        .signal(Signal::SIGTERM)
        .unwrap();
    let status = cluster
        .daemon("n2")
        .unwrap()
        .wait_timeout(Duration::from_secs(30))
        .unwrap();
    assert!(status.success(), "n2's daemon stopped with {status}");
    cluster.start("n2").unwrap();
    wait_paired(&cluster);
    replicated(&lab, "restarted-n2");
}
