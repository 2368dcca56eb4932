//! `halo state`, `halo status` and the ready.txt health check on a node
//! whose farm module runs.

use std::{process::Command, time::Duration};

use halo_tests::{
    cluster::{halo_bin, Cluster, Timing, API_PORT},
    lab::{self, LabBuilder},
};

/// A farm module with no scripts: it reaches UP as soon as it starts.
fn farm_module() -> String {
    format!(
        "[[module]]\nname = \"web\"\nkind = \"farm\"\ninterface = \"eth0\"\nvips = [\"{}\"]\n\n\
         [[module.rule]]\nproto = \"tcp\"\nport = 80\n",
        lab::lab_ipv4(200)
    )
}

/// `halo state web -q` on `node`: its exit code.
fn state_code(lab: &lab::Lab, node: &str) -> Option<i32> {
    let api = format!("127.0.0.1:{API_PORT}");
    let output = lab
        .host(node)
        .run(Command::new(halo_bin()).args(["state", "web", "-q", "--api", &api]))
        .unwrap();
    assert!(
        output.stdout.is_empty(),
        "-q prints nothing, saw {output:?}"
    );
    output.status.code()
}

/// The HTTP status of ready.txt, fetched from the other host as a load
/// balancer would.
fn ready_status(lab: &lab::Lab, from: &str, node: &str) -> String {
    let url = format!(
        "http://{}:{API_PORT}/var/modules/web/ready.txt",
        lab.host(node).ipv4()
    );
    let script = format!(
        "exec 3<>/dev/tcp/{}/{API_PORT} && printf 'GET /var/modules/web/ready.txt HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3",
        lab.host(node).ipv4()
    );
    let line = lab
        .host(from)
        .run(Command::new("bash").args(["-c", &script]))
        .unwrap();
    assert!(line.status.success(), "fetching {url}: {line:?}");
    String::from_utf8_lossy(&line.stdout).trim().to_owned()
}

#[test]
fn state_exit_code_and_ready_txt_follow_the_farm_module() {
    let lab = LabBuilder::new("state").hosts(&["a", "b"]).build().unwrap();
    let mut cluster =
        Cluster::configure(&lab, &["a", "b"], 1, Timing::default(), &farm_module()).unwrap();
    cluster.start("a").unwrap();

    cluster
        .wait_status("a", Duration::from_secs(10), "web UP and ready", |s| {
            s.modules
                .iter()
                .any(|m| m.name == "web" && m.state == "UP" && m.phase == "ready")
        })
        .unwrap();
    assert_eq!(state_code(&lab, "a"), Some(2), "UP is exit code 2");
    assert!(
        ready_status(&lab, "b", "a").contains("200"),
        "ready.txt of an UP node answers 200"
    );

    // An unknown module is a clear error, not a state.
    let api = format!("127.0.0.1:{API_PORT}");
    let output = lab
        .host("a")
        .run(Command::new(halo_bin()).args(["state", "nope", "--api", &api]))
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("no module \"nope\"") && stderr.contains("web"),
        "saw {stderr}"
    );

    // SIGTERM stops the module (stop scripts) and the daemon.
    cluster
        .daemon("a")
        .unwrap()
        .signal(lab::Signal::SIGTERM)
        .unwrap();
    let status = cluster
        .daemon("a")
        .unwrap()
        .wait_timeout(Duration::from_secs(10))
        .unwrap();
    assert!(
        status.success(),
        "the daemon exits 0 after SIGTERM, saw {status}"
    );
    let log = cluster.log("a").unwrap();
    assert!(
        log.contains("UP -> STOP") || log.contains("-> STOP"),
        "stop logged: {log}"
    );

    // A daemon that is not running: the CLI says so.
    let output = lab
        .host("a")
        .run(Command::new(halo_bin()).args(["state", "web", "--api", &api]))
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is `halo run` running?"), "saw {stderr}");
}
