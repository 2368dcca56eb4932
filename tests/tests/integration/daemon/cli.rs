//! The `halo` CLI against three real daemons running a farm: every command,
//! `--json` read back, `-H all` merged over the three nodes, a dead node
//! shown as unreachable, a wrong token refused, the support snapshot free
//! of secrets; and the Debian package installed into a fresh root.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use halo::api::{ModuleStatus, NodeStatus};
use halo_tests::{
    cluster::{halo_bin, module_in, Cluster, Timing, CONFIG_PATH, TEST_SECRET, TEST_TOKEN},
    lab::{self, LabBuilder},
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// Stdout of a command that must succeed.
fn ok(what: &str, output: Output) -> String {
    assert!(
        output.status.success(),
        "`halo {what}` should succeed, saw {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn json(what: &str, text: &str) -> Value {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("`halo {what}` should print JSON ({e}), saw {text}"))
}

/// Runs `halo ARGS --config CONFIG_PATH` on `node`, with no `--api`: what
/// `-H` needs, since it finds the nodes in the configuration.
fn halo_on(lab: &lab::Lab, node: &str, args: &[&str]) -> Output {
    lab.host(node)
        .run(
            Command::new(halo_bin())
                .args(args)
                .args(["--config", CONFIG_PATH]),
        )
        .unwrap_or_else(|e| panic!("running halo {args:?} on {node}: {e:#}"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn every_command_against_three_daemons_merged_with_h_all() {
    let lab = LabBuilder::new("cli")
        .hosts(&["a", "b", "c"])
        .build()
        .unwrap();
    let modules = format!(
        "[[module]]\nname = \"web\"\nkind = \"farm\"\ninterface = \"eth0\"\nvips = [\"{}\"]\n\n\
         [[module.rule]]\nproto = \"tcp\"\nport = 80\n\n\
         [[module.checker]]\nkind = \"interface\"\n",
        lab::lab_ipv4(200)
    );
    let mut cluster =
        Cluster::configure(&lab, &["a", "b", "c"], 1, Timing::default(), &modules).unwrap();
    cluster.start_all().unwrap();
    for node in ["a", "b", "c"] {
        cluster
            .wait_status(node, WAIT, "web UP with both peers", |s| {
                module_in(s, "web", "UP", "ready") && s.peers.iter().all(|p| p.up)
            })
            .unwrap();
    }

    // The farm's table takes in every node once each has seen the others UP.
    lab::wait_until(WAIT, "a's bucket table to count 3 members", || {
        let output = cluster.cli("a", &["buckets", "web", "--json"])?;
        let table: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        Ok(table["members"].as_array().is_some_and(|members| {
            members.len() == 3 && members.iter().all(|m| m["buckets"].as_u64() > Some(0))
        }))
    })
    .unwrap();

    // status: a table for people, JSON with the load share for scripts.
    let table = ok("status", cluster.cli("a", &["status"]).unwrap());
    assert!(
        table.contains("node a of cluster lab") && table.contains("SHARE"),
        "{table}"
    );
    let status = json(
        "status --json",
        &ok(
            "status --json",
            cluster.cli("a", &["status", "--json"]).unwrap(),
        ),
    );
    let share = status["load_share"]["web"].as_f64().unwrap_or_else(|| {
        panic!("status --json should carry web's load share on a, saw {status}")
    });
    assert!(
        (20.0..=45.0).contains(&share),
        "a's share of 3 equal nodes: {share}"
    );
    let parsed: NodeStatus = serde_json::from_value(status).unwrap();
    assert_eq!(parsed.node, "a");

    // state: text, -q's exit code, JSON.
    // Like `-q`, the plain form exits with the state's code (UP: 2).
    let state = cluster.cli("a", &["state", "web"]).unwrap();
    assert_eq!(
        (stdout(&state).trim(), state.status.code()),
        ("UP (ready)", Some(2)),
        "{state:?}"
    );
    let quiet = cluster.cli("a", &["state", "web", "-q"]).unwrap();
    assert_eq!(quiet.status.code(), Some(2), "UP is exit code 2: {quiet:?}");
    assert!(quiet.stdout.is_empty());
    let module: ModuleStatus = serde_json::from_str(&stdout(
        &cluster.cli("a", &["state", "web", "--json"]).unwrap(),
    ))
    .unwrap();
    assert_eq!((module.name.as_str(), module.state.as_str()), ("web", "UP"));
    let unknown = cluster.cli("a", &["state", "nope"]).unwrap();
    assert!(
        !unknown.status.success() && stderr(&unknown).contains("no module \"nope\""),
        "an unknown module is named: {unknown:?}"
    );

    // buckets: the grid, and JSON with the three members.
    let grid = ok(
        "buckets web",
        cluster.cli("a", &["buckets", "web"]).unwrap(),
    );
    assert!(grid.contains("share") && grid.contains("bucket"), "{grid}");
    let buckets = json(
        "buckets web --json",
        &ok(
            "buckets web --json",
            cluster.cli("a", &["buckets", "web", "--json"]).unwrap(),
        ),
    );
    assert_eq!(
        buckets["members"].as_array().map(Vec::len),
        Some(3),
        "{buckets}"
    );

    // log: the last events, and one JSON object per line.
    let log = ok(
        "log web -n 3",
        cluster.cli("a", &["log", "web", "-n", "3"]).unwrap(),
    );
    assert_eq!(log.lines().count(), 3, "-n 3 prints 3 events: {log}");
    let log_json = ok(
        "log web --json",
        cluster.cli("a", &["log", "web", "--json"]).unwrap(),
    );
    for line in log_json.lines() {
        let event = json("log web --json", line);
        assert!(
            event["at_ms"].is_u64() && event["text"].is_string(),
            "{line}"
        );
    }

    // log -f: follows what the actions below add, each event once.
    let mut follower = lab
        .host("a")
        .spawn(
            "halo-log-follow",
            Command::new(halo_bin()).args(["log", "web", "-f", "-n", "1", "--config", CONFIG_PATH]),
        )
        .unwrap();

    // Actions on every node at once, one row per node.
    let stop = ok(
        "stop web -H all",
        halo_on(&lab, "a", &["stop", "web", "-H", "all"]),
    );
    for node in ["a", "b", "c"] {
        assert!(
            stop.lines()
                .any(|l| l.starts_with(node) && l.contains("stop requested")),
            "a row for {node}: {stop}"
        );
        cluster
            .wait_status(node, WAIT, "web STOP", |s| {
                module_in(s, "web", "STOP", "ready")
            })
            .unwrap();
    }
    let states = ok(
        "state web -H all",
        halo_on(&lab, "a", &["state", "web", "-H", "all"]),
    );
    assert_eq!(
        states.lines().filter(|l| l.contains("STOP")).count(),
        3,
        "{states}"
    );
    ok(
        "start web -H all",
        halo_on(&lab, "a", &["start", "web", "-H", "b,c,a"]),
    );
    for node in ["a", "b", "c"] {
        cluster
            .wait_status(node, WAIT, "web UP again", |s| {
                module_in(s, "web", "UP", "ready")
            })
            .unwrap();
    }
    ok(
        "restart web",
        cluster.cli("b", &["restart", "web"]).unwrap(),
    );
    ok(
        "checkers web off",
        cluster.cli("a", &["checkers", "web", "off"]).unwrap(),
    );
    cluster
        .wait_status("a", WAIT, "checkers off", |s| {
            s.modules.iter().any(|m| m.name == "web" && !m.checkers)
        })
        .unwrap();
    ok(
        "checkers web on",
        cluster.cli("a", &["checkers", "web", "on"]).unwrap(),
    );
    // A farm refuses mirror actions: the CLI fails with the machine's
    // reason, which the module's log keeps too.
    for (action, why) in [
        (
            &["prim", "web"][..],
            "prim refused: a farm module has no primary",
        ),
        (
            &["second", "web"],
            "second refused: a farm module has no primary",
        ),
        (
            &["swap", "web"],
            "swap refused: a farm module has no primary",
        ),
        (
            &["failover", "web", "off"],
            "failover-off refused: failover applies to mirror modules",
        ),
    ] {
        let refused = cluster.cli("c", action).unwrap();
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(
            refused.status.code() == Some(1) && said.contains("answered 409") && said.contains(why),
            "halo {}: {refused:?}",
            action.join(" ")
        );
    }
    cluster
        .wait_status("b", WAIT, "b UP after its restart", |s| {
            module_in(s, "web", "UP", "ready")
        })
        .unwrap();

    lab::wait_until(WAIT, "log -f to print the STOP and the UP", || {
        let text = follower.log()?;
        Ok(text.contains("STOP") && text.lines().count() >= 3)
    })
    .unwrap_or_else(|e| panic!("{e:#}; log -f printed:\n{}", follower.log().unwrap()));
    follower.kill().unwrap();
    let followed = follower.log().unwrap();
    let mut lines: Vec<&str> = followed.lines().collect();
    let printed = lines.len();
    lines.sort_unstable();
    lines.dedup();
    assert_eq!(
        lines.len(),
        printed,
        "log -f printed an event twice:\n{followed}"
    );

    // status -H all: one merged table, one row per node, and its JSON.
    // Once b's restart has settled, every node's table is the same again.
    lab::wait_until(WAIT, "the three tables to agree", || {
        let tables = halo_on(&lab, "a", &["buckets", "web", "-H", "all", "--json"]);
        let tables: Value = serde_json::from_slice(&tables.stdout).unwrap_or_default();
        let owners: Vec<&Value> = tables["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| &n["answer"]["owners"])
            .collect();
        Ok(owners.len() == 3 && owners.iter().all(|o| o.is_array() && *o == owners[0]))
    })
    .unwrap();
    let merged = ok(
        "status -H all",
        halo_on(&lab, "a", &["status", "-H", "all"]),
    );
    for node in ["a", "b", "c"] {
        assert!(
            merged.lines().any(|l| l.starts_with(&format!("{node} "))
                && l.contains("web")
                && l.contains("UP")),
            "a row for {node}: {merged}"
        );
    }
    let merged_json = json(
        "status -H all --json",
        &ok(
            "status -H all --json",
            halo_on(&lab, "b", &["status", "-H", "all", "--json"]),
        ),
    );
    let nodes: Vec<&str> = merged_json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["answer"]["node"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(nodes, ["a", "b", "c"], "{merged_json}");
    let shares: f64 = merged_json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["answer"]["load_share"]["web"].as_f64().unwrap_or(0.0))
        .sum();
    assert!(
        (shares - 100.0).abs() < 0.5,
        "the shares add up to 100%: {shares}"
    );
    let tables = ok(
        "buckets web -H all",
        halo_on(&lab, "a", &["buckets", "web", "-H", "all"]),
    );
    let digests: Vec<&str> = tables
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    assert!(
        digests.len() == 3 && digests.iter().all(|d| *d == digests[0]),
        "every node computes the same table: {tables}"
    );
    let events = ok(
        "log web -H all",
        halo_on(&lab, "a", &["log", "web", "-H", "all", "-n", "30"]),
    );
    for node in ["a", "b", "c"] {
        assert!(
            events
                .lines()
                .any(|l| l.split_whitespace().nth(2) == Some(node)),
            "events of {node} in the merged log: {events}"
        );
    }

    // A wrong token: refused by every node, said clearly, exit 77.
    std::fs::write(
        lab.host("a").outside_path("/etc/halo/wrong.token"),
        "not-the-token",
    )
    .unwrap();
    let refused = halo_on(
        &lab,
        "a",
        &[
            "stop",
            "web",
            "-H",
            "all",
            "--token-file",
            "/etc/halo/wrong.token",
        ],
    );
    assert_eq!(refused.status.code(), Some(77), "{refused:?}");
    let text = stdout(&refused);
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("REFUSED") && l.contains("/etc/halo/wrong.token"))
            .count(),
        3,
        "each node's refusal names the token file: {text}"
    );
    assert!(
        !text.contains("not-the-token"),
        "a token is never printed: {text}"
    );
    let single = cluster
        .cli(
            "a",
            &["stop", "web", "--token-file", "/etc/halo/wrong.token"],
        )
        .unwrap();
    assert_eq!(single.status.code(), Some(77), "{single:?}");
    assert!(stderr(&single).contains("refused"), "{}", stderr(&single));
    assert!(module_in(
        &cluster.status("a").unwrap(),
        "web",
        "UP",
        "ready"
    ));

    // The support snapshot: everything but the secrets.
    snapshot_holds_no_secret(&cluster, &lab);

    // A dead node: its row says unreachable, the others answer, exit 69.
    cluster.kill("c").unwrap();
    let dead = halo_on(&lab, "a", &["status", "-H", "all"]);
    assert_eq!(dead.status.code(), Some(69), "{dead:?}");
    let text = stdout(&dead);
    assert!(
        text.lines()
            .any(|l| l.starts_with("c ") && l.contains("UNREACHABLE")),
        "c is shown unreachable: {text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("a ") && l.contains("web")),
        "a still answers: {text}"
    );
    assert!(
        stderr(&dead).contains("1 of 3 nodes failed: c unreachable"),
        "{}",
        stderr(&dead)
    );
    let dead_json = json(
        "status -H all --json",
        &stdout(&halo_on(&lab, "a", &["status", "-H", "all", "--json"])),
    );
    assert_eq!(
        dead_json["nodes"][2]["error"]["kind"], "unreachable",
        "{dead_json}"
    );
    let single = cluster.cli("c", &["status"]).unwrap();
    assert_eq!(single.status.code(), Some(69), "{single:?}");
    assert!(
        stderr(&single).contains("cannot reach the halo daemon"),
        "{single:?}"
    );
}

/// `halo snapshot` on a: the archive holds the configuration, the API's
/// answers, the module log, versions and map dumps, and no byte of the
/// secret or the token.
fn snapshot_holds_no_secret(cluster: &Cluster, lab: &lab::Lab) {
    let made = cluster
        .cli("a", &["snapshot", "/etc/halo/snapshot.tar.gz"])
        .unwrap();
    ok("snapshot", made);
    let archive = lab.host("a").outside_path("/etc/halo/snapshot.tar.gz");
    let unpacked = tempdir("snapshot");
    let tar = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .output()
        .unwrap();
    assert!(tar.status.success(), "the snapshot is a tar.gz: {tar:?}");
    let files = walk(&unpacked);
    let names: Vec<String> = files
        .iter()
        .map(|f| {
            let relative = f.strip_prefix(&unpacked).unwrap();
            // Below the one top directory, halo-snapshot-a-<time>/.
            relative
                .components()
                .skip(1)
                .collect::<PathBuf>()
                .display()
                .to_string()
        })
        .collect();
    for wanted in [
        "config/halo.toml",
        "config/secret-files.txt",
        "versions.txt",
        "api/state.json",
        "api/modules/web.json",
        "api/modules/web/buckets.json",
        "logs/web.jsonl",
        "ebpf/maps.json",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} in the snapshot: {names:?}"
        );
    }
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("ebpf/map-") && n.contains("FARM_")),
        "the farm's maps are dumped: {names:?}"
    );
    for (file, name) in files.iter().zip(&names) {
        let data = std::fs::read(file).unwrap();
        for secret in [TEST_TOKEN, TEST_SECRET] {
            assert!(
                !data.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{name} holds a secret"
            );
        }
    }
    let listing = std::fs::read_to_string(
        files[names
            .iter()
            .position(|n| n == "config/secret-files.txt")
            .unwrap()]
        .clone(),
    )
    .unwrap();
    assert!(
        listing.contains("/etc/halo/api.token") && listing.contains("mode 0600"),
        "{listing}"
    );
    std::fs::remove_dir_all(&unpacked).unwrap();
}

/// `cargo xtask package` on the binary under test, then the package
/// installed by dpkg into an empty root: files, conffile, maintainer
/// scripts (the secret and token written, mode 0600), and the packaged
/// `halo check-config` accepting the packaged configuration.
#[test]
fn package_installs_into_a_fresh_root() {
    let halo = halo_bin();
    let xtask = halo.with_file_name("xtask");
    assert!(
        xtask.is_file(),
        "{} is missing: `cargo build -p xtask` (or any `cargo xtask …`) builds it",
        xtask.display()
    );
    let out = tempdir("deb");
    let built = Command::new(&xtask)
        .arg("package")
        .arg("--halo-bin")
        .arg(&halo)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(built.status.success(), "xtask package: {built:?}");
    let deb = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb in the output directory");

    let info = run_ok(Command::new("dpkg-deb").arg("--info").arg(&deb));
    for field in [
        "Package: halo",
        "Architecture:",
        "Depends: libc6",
        "conffiles",
        "postinst",
    ] {
        assert!(info.contains(field), "{field} in dpkg-deb --info: {info}");
    }
    let conffiles = run_ok(
        Command::new("dpkg-deb")
            .arg("-I")
            .arg(&deb)
            .arg("conffiles"),
    );
    assert_eq!(conffiles.trim(), "/etc/halo/halo.toml");
    let contents = run_ok(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for path in [
        "./usr/bin/halo",
        "./lib/systemd/system/halo.service",
        "./etc/halo/halo.toml",
        "./usr/share/man/man1/halo.1.gz",
        "./usr/share/man/man1/halo-status.1.gz",
        "./usr/share/bash-completion/completions/halo",
        "./usr/share/zsh/vendor-completions/_halo",
        "./usr/share/fish/vendor_completions.d/halo.fish",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} in the package: {contents}"
        );
    }
    assert!(
        contents
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x root/root") && l.ends_with("./usr/bin/halo")),
        "the binary is root's and executable: {contents}"
    );

    // An empty root with nothing but dpkg's database: dpkg runs the
    // maintainer scripts outside it, with DPKG_ROOT set.
    let root = out.join("root");
    for dir in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(root.join("var/lib/dpkg").join(dir)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        run_ok(
            Command::new("dpkg")
                .arg(format!("--root={}", root.display()))
                .args(["--force-script-chrootless", "--force-depends"])
                .args(args),
        )
    };
    dpkg(&["--install", deb.to_str().unwrap()]);
    let mode = |path: &str| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(root.join(path))
            .unwrap_or_else(|e| panic!("{path} after install: {e}"))
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("usr/bin/halo"), 0o755);
    assert_eq!(mode("var/lib/halo"), 0o700);
    for secret in ["etc/halo/cluster.key", "etc/halo/api.token"] {
        assert_eq!(mode(secret), 0o600, "{secret}");
        let text = std::fs::read_to_string(root.join(secret)).unwrap();
        assert!(
            text.trim().len() == 64 && text.trim().chars().all(|c| c.is_ascii_hexdigit()),
            "{secret} holds a fresh key: {text:?}"
        );
    }
    let key = std::fs::read(root.join("etc/halo/cluster.key")).unwrap();
    // A reinstall keeps the key the cluster shares.
    dpkg(&["--install", deb.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(root.join("etc/halo/cluster.key")).unwrap(),
        key
    );

    let checked = run_ok(
        Command::new(root.join("usr/bin/halo"))
            .arg("check-config")
            .arg(root.join("etc/halo/halo.toml")),
    );
    assert!(checked.contains("valid"), "{checked}");
    let man = run_ok(Command::new("zcat").arg(root.join("usr/share/man/man1/halo.1.gz")));
    assert!(man.contains(".TH halo 1"), "{man}");

    dpkg(&["--purge", "halo"]);
    assert!(
        !root.join("usr/bin/halo").exists(),
        "purge removes the binary"
    );
    assert!(
        !root.join("var/lib/halo").exists(),
        "purge removes the state"
    );
    assert!(
        !root.join("etc/halo/cluster.key").exists(),
        "purge removes the key"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

fn run_ok(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} should succeed: {output:?}"
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A new empty directory of this test run.
fn tempdir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("halo-cli-{what}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every regular file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}
