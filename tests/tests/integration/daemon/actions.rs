//! Module actions through the CLI and the API: start, stop, checkers off,
//! and a wrong token refused.

use std::time::Duration;

use halo_tests::{
    cluster::{Cluster, Timing},
    lab::{self, LabBuilder},
};

fn module_state(status: &halo::api::NodeStatus) -> Option<(String, String, bool)> {
    status
        .modules
        .iter()
        .find(|m| m.name == "web")
        .map(|m| (m.state.clone(), m.phase.clone(), m.checkers))
}

#[test]
fn stop_start_and_checkers_switch_through_the_cli_with_the_token() {
    let lab = LabBuilder::new("actions")
        .hosts(&["a", "b"])
        .build()
        .unwrap();
    let modules = format!(
        "[[module]]\nname = \"web\"\nkind = \"farm\"\ninterface = \"eth0\"\nvips = [\"{}\"]\n\n\
         [[module.rule]]\nproto = \"tcp\"\nport = 80\n\n\
         [[module.checker]]\nkind = \"interface\"\n",
        lab::lab_ipv4(200)
    );
    let mut cluster =
        Cluster::configure(&lab, &["a", "b"], 1, Timing::default(), &modules).unwrap();
    cluster.start("a").unwrap();
    let wait = Duration::from_secs(10);
    let is = |state: &'static str| {
        move |s: &halo::api::NodeStatus| {
            module_state(s).is_some_and(|(st, phase, _)| st == state && phase == "ready")
        }
    };
    cluster.wait_status("a", wait, "web UP", is("UP")).unwrap();

    let out = cluster.cli("a", &["stop", "web"]).unwrap();
    assert!(out.status.success(), "halo stop web: {out:?}");
    cluster
        .wait_status("a", wait, "web STOP", is("STOP"))
        .unwrap();

    let out = cluster.cli("a", &["start", "web"]).unwrap();
    assert!(out.status.success(), "halo start web: {out:?}");
    cluster
        .wait_status("a", wait, "web UP again", is("UP"))
        .unwrap();

    let out = cluster.cli("a", &["checkers", "web", "off"]).unwrap();
    assert!(out.status.success(), "halo checkers web off: {out:?}");
    cluster
        .wait_status("a", wait, "checkers off", |s| {
            module_state(s).is_some_and(|(_, _, checkers)| !checkers)
        })
        .unwrap();

    // A wrong token is refused, and the module is untouched.
    let wrong = lab.host("a").outside_path("/etc/halo/wrong.token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let out = cluster
        .cli(
            "a",
            &["stop", "web", "--token-file", "/etc/halo/wrong.token"],
        )
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong token must fail: {out:?}");
    assert!(
        stderr.contains("401") && stderr.contains("wrong token"),
        "saw {stderr}"
    );
    assert!(
        is("UP")(&cluster.status("a").unwrap()),
        "the refused stop changed nothing"
    );

    // Unknown modules are named.
    let out = cluster.cli("a", &["stop", "nope"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("404") && stderr.contains("no module \"nope\""),
        "saw {stderr}"
    );
}
