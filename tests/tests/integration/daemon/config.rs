//! A bad configuration is refused with every problem named at its place,
//! `FILE:LINE:COLUMN: KEY: what is expected`, and exit code 64, by both
//! `halo check-config FILE` and `halo run --config FILE`, which starts
//! nothing.
//!
//! These run the real binary on files in a scratch directory of their own;
//! they need no lab. Each case is the valid [`base`] configuration with one
//! thing broken, so that the problem reported can only be that one.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::Duration,
};

use halo_tests::{cluster::halo_bin, lab::wait_until};

/// The exit code of a bad configuration (`EX_USAGE`).
const EXIT_BAD_CONFIG: i32 = 64;
/// How long a refusal may take: it is immediate; this only catches a
/// `halo run` that went on to start.
const REFUSAL_BOUND: Duration = Duration::from_secs(10);

/// A valid configuration, written into `dir`. The line numbers of the
/// expectations below count in this text (line 1 is `[node]`).
///
/// Its secret file does not exist: were a case wrongly accepted, `halo run`
/// would fail on the secret before it bound any socket.
fn base(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"[node]
name = "alpha"
state_dir = "{dir}/state"

[cluster]
name = "lab"
secret_file = "{dir}/missing.key"

[[cluster.network]]
name = "lan"
pulse = "100ms"
timeout = "500ms"

[[cluster.node]]
name = "alpha"
addresses = {{ lan = "10.0.0.1" }}

[[cluster.node]]
name = "beta"
addresses = {{ lan = "10.0.0.2" }}

[api]
listen = "127.0.0.1:9010"

[[module]]
name = "web"
kind = "farm"
interface = "eth0"
vips = ["10.0.0.100"]

[[module.rule]]
proto = "tcp"
port = 80

[module.scripts]
start_both = "/etc/halo/web/start"

[[module.checker]]
kind = "process"
name = "nginx"
interval = "1s"
"#
    )
}

/// A directory of its own for one case, removed when dropped.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(case: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("halo-config-{}-{case}", std::process::id()));
        // A leftover of an earlier run of this very process id.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Scratch { dir }
    }

    /// Writes `text` to `name` in the directory; its path.
    fn write(&self, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.dir) {
            eprintln!("cleanup: remove {}: {error}", self.dir.display());
        }
    }
}

/// `text` with each `(old, new)` applied: `old` is a whole line that must
/// appear exactly once, and `new` (possibly several lines) takes its place.
fn edit(text: &str, edits: &[(&str, &str)]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for (old, new) in edits {
        let found: Vec<usize> = (0..lines.len()).filter(|&i| lines[i] == *old).collect();
        assert_eq!(
            found.len(),
            1,
            "the test edits {old:?}, which must be one line of the base"
        );
        lines[found[0]] = (*new).to_owned();
    }
    lines.join("\n") + "\n"
}

/// What a finished `halo` run gave.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `halo args…` with its output in files of `scratch`, killing it if it
/// does not end within [`REFUSAL_BOUND`].
fn halo(scratch: &Scratch, args: &[&str]) -> Ran {
    let out_path = scratch.dir.join("stdout");
    let err_path = scratch.dir.join("stderr");
    let create = |path: &Path| {
        File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
    };
    let mut child = Command::new(halo_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(create(&out_path))
        .stderr(create(&err_path))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn halo {args:?}: {e}"));
    let waited = wait_until(REFUSAL_BOUND, &format!("halo {args:?} to exit"), || {
        Ok(child.try_wait()?.is_some())
    });
    if let Err(error) = waited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("expected halo {args:?} to refuse the configuration at once: {error:#}");
    }
    let status = child.wait().expect("reap halo");
    let read = |path: &Path| {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    };
    Ran {
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

/// Asserts that both commands refuse `file` with exit code 64 and exactly
/// `stderr`, and that `halo run` started nothing (no output, no state
/// directory).
fn assert_refused_with(scratch: &Scratch, file: &Path, stderr: &str) {
    let file = file.to_str().expect("a UTF-8 scratch path");
    for args in [vec!["check-config", file], vec!["run", "--config", file]] {
        let ran = halo(scratch, &args);
        assert_eq!(
            ran.status.code(),
            Some(EXIT_BAD_CONFIG),
            "expected halo {args:?} to exit {EXIT_BAD_CONFIG}, saw {}; stderr:\n{}",
            ran.status,
            ran.stderr
        );
        assert_eq!(
            ran.stderr, stderr,
            "expected this stderr from halo {args:?}"
        );
        assert_eq!(
            ran.stdout, "",
            "expected halo {args:?} to print nothing on stdout"
        );
    }
    let state_dir = scratch.dir.join("state");
    assert!(
        !state_dir.exists(),
        "expected halo run to stop before creating its state directory {}",
        state_dir.display()
    );
}

/// Writes `text` as `halo.toml` and asserts that it is refused with exactly
/// `problems`, each `(line, column, "KEY: message")`, in this order.
fn assert_problems(scratch: &Scratch, text: &str, problems: &[(usize, usize, &str)]) {
    let file = scratch.write("halo.toml", text);
    let mut stderr = String::from("halo: invalid configuration:\n");
    for (line, column, problem) in problems {
        stderr.push_str(&format!("{}:{line}:{column}: {problem}\n", file.display()));
    }
    assert_refused_with(scratch, &file, &stderr);
}

/// The base with `edits` applied must be refused with exactly `problems`.
fn assert_edit_refused(case: &str, edits: &[(&str, &str)], problems: &[(usize, usize, &str)]) {
    let scratch = Scratch::new(case);
    assert_problems(&scratch, &edit(&base(&scratch.dir), edits), problems);
}

#[test]
fn the_base_configuration_of_these_cases_is_valid() {
    let scratch = Scratch::new("base");
    let file = scratch.write("halo.toml", base(&scratch.dir));
    let ran = halo(&scratch, &["check-config", file.to_str().unwrap()]);
    assert!(
        ran.status.success(),
        "expected the base configuration to be valid, saw {}: {}",
        ran.status,
        ran.stderr
    );
    assert_eq!(
        ran.stdout,
        format!(
            "{}: valid: node alpha of cluster lab (2 nodes, 1 heartbeat networks); modules: web (farm)\n",
            file.display()
        )
    );
}

#[test]
fn a_syntax_error_is_one_problem_at_its_place_without_a_key() {
    // The parser's own wording is its business; the place and the shape
    // (no key, one line) are halo's.
    for (case, edits, at) in [
        (
            "syntax-string",
            [("name = \"lab\"", "name = \"lab")],
            "6:12: ",
        ),
        ("syntax-header", [("[api]", "[api")], "22:5: "),
    ] {
        let scratch = Scratch::new(case);
        let file = scratch.write("halo.toml", edit(&base(&scratch.dir), &edits));
        let prefix = format!("halo: invalid configuration:\n{}:{at}", file.display());
        for args in [
            vec!["check-config", file.to_str().unwrap()],
            vec!["run", "--config", file.to_str().unwrap()],
        ] {
            let ran = halo(&scratch, &args);
            assert_eq!(
                ran.status.code(),
                Some(EXIT_BAD_CONFIG),
                "{case}: halo {args:?}: {}",
                ran.stderr
            );
            let problem = ran.stderr.strip_prefix(&prefix).unwrap_or_else(|| {
                panic!(
                    "{case}: expected stderr to start with {prefix:?}, saw {:?}",
                    ran.stderr
                )
            });
            assert!(
                problem.ends_with('\n')
                    && problem.trim_end().lines().count() == 1
                    && !problem.trim().is_empty(),
                "{case}: expected one line saying what the parser expected, saw {problem:?}"
            );
        }
    }
}

#[test]
fn an_unknown_top_level_key_is_named_with_the_keys_that_exist() {
    let scratch = Scratch::new("unknown-top");
    let text = format!("colour = \"blue\"\n{}", base(&scratch.dir));
    assert_problems(
        &scratch,
        &text,
        &[(
            1,
            1,
            r#"colour: unknown key "colour": expected one of "node", "cluster", "api", "module""#,
        )],
    );
}

#[test]
fn an_unknown_module_key_is_named_with_the_keys_a_farm_takes() {
    assert_edit_refused(
        "unknown-module",
        &[(
            "vips = [\"10.0.0.100\"]",
            "vips = [\"10.0.0.100\"]\ncolour = \"red\"",
        )],
        &[(
            30,
            1,
            r#"module "web".colour: unknown key "colour": expected one of "name", "interface", "vips", "rule", "power", "nodes", "scripts", "maxloop", "loop_interval", "xdp_mode", "udp_idle", "drain_timeout", "kind", "checker""#,
        )],
    );
}

#[test]
fn a_misspelt_checker_key_gets_a_suggestion() {
    assert_edit_refused(
        "unknown-checker",
        &[("interval = \"1s\"", "intervall = \"1s\"")],
        &[(
            41,
            1,
            r#"module "web".checker[0].intervall: unknown key "intervall": did you mean "interval"?"#,
        )],
    );
}

#[test]
fn a_value_of_the_wrong_type_says_what_was_expected_and_found() {
    assert_edit_refused(
        "wrong-type-duration",
        &[("timeout = \"500ms\"", "timeout = 500")],
        &[(
            12,
            11,
            r#"cluster.network "lan".timeout: expected a duration like "500ms" or "30s", found integer 500"#,
        )],
    );
    assert_edit_refused(
        "wrong-type-number",
        &[(
            "vips = [\"10.0.0.100\"]",
            "vips = [\"10.0.0.100\"]\nmaxloop = \"3\"",
        )],
        &[(
            30,
            11,
            r#"module "web".maxloop: expected a whole number from 0 to 4294967295, found string "3""#,
        )],
    );
    assert_edit_refused(
        "wrong-type-port",
        &[("port = 80", "port = true")],
        &[(
            33,
            8,
            r#"module "web".rule[0].port: expected a port number from 1 to 65535 or a range like "8000-8100", found boolean true"#,
        )],
    );
}

#[test]
fn a_bad_duration_is_refused() {
    for (case, pulse) in [
        ("duration-space", "100 ms"),
        ("duration-fraction", "1.5s"),
        ("duration-unit", "100"),
    ] {
        let line = format!("pulse = \"{pulse}\"");
        assert_edit_refused(
            case,
            &[("pulse = \"100ms\"", &line)],
            &[(
                11,
                9,
                &format!(
                    r#"cluster.network "lan".pulse: expected a duration like "500ms" or "30s", found "{pulse}""#
                ),
            )],
        );
    }
}

#[test]
fn a_bad_ip_address_is_refused() {
    assert_edit_refused(
        "bad-ip",
        &[(
            "addresses = { lan = \"10.0.0.2\" }",
            "addresses = { lan = \"10.0.0.256\" }",
        )],
        &[(
            20,
            21,
            r#"cluster.node "beta".addresses.lan: expected an IPv4 or IPv6 address like "10.0.0.1", found "10.0.0.256""#,
        )],
    );
}

#[test]
fn a_value_outside_its_choices_lists_the_choices() {
    assert_edit_refused(
        "enum-proto",
        &[("proto = \"tcp\"", "proto = \"sctp\"")],
        &[(
            32,
            9,
            r#"module "web".rule[0].proto: expected "tcp" or "udp", found "sctp""#,
        )],
    );
    assert_edit_refused(
        "enum-action",
        &[(
            "interval = \"1s\"",
            "interval = \"1s\"\naction = \"reboot\"",
        )],
        &[(
            42,
            10,
            r#"module "web".checker[0].action: expected one of "restart", "stopstart", "stop", "wait", found "reboot""#,
        )],
    );
    assert_edit_refused(
        "enum-kind",
        &[("kind = \"farm\"", "kind = \"farmm\"")],
        &[(
            27,
            8,
            r#"module "web".kind: expected "farm" or "mirror", found "farmm""#,
        )],
    );
}

#[test]
fn a_duplicate_node_name_is_refused_at_the_second_one() {
    assert_edit_refused(
        "duplicate-node",
        &[("name = \"beta\"", "name = \"alpha\"")],
        &[(
            19,
            8,
            r#"cluster.node "alpha".name: duplicate node name "alpha": expected a name of its own"#,
        )],
    );
}

#[test]
fn a_module_node_that_is_not_in_the_cluster_is_refused() {
    assert_edit_refused(
        "module-node",
        &[(
            "vips = [\"10.0.0.100\"]",
            "vips = [\"10.0.0.100\"]\nnodes = [\"alpha\", \"gamma\"]",
        )],
        &[(
            30,
            19,
            r#"module "web".nodes[1]: expected the name of a cluster node ("alpha", "beta"), found "gamma""#,
        )],
    );
}

#[test]
fn a_mirror_of_three_nodes_is_refused() {
    let scratch = Scratch::new("mirror-3");
    let cluster: String = base(&scratch.dir)
        .lines()
        .take(23)
        .map(|l| format!("{l}\n"))
        .collect();
    let text = format!(
        "{cluster}\n[[cluster.node]]\nname = \"gamma\"\naddresses = {{ lan = \"10.0.0.3\" }}\n\n\
         [[module]]\nname = \"db\"\nkind = \"mirror\"\nnodes = [\"alpha\", \"beta\", \"gamma\"]\n\n\
         [[module.dir]]\npath = \"/var/lib/db\"\n"
    );
    assert_problems(
        &scratch,
        &text,
        &[(
            32,
            9,
            r#"module "db".nodes: expected exactly 2 nodes (a primary and a secondary), found 3"#,
        )],
    );
}

#[test]
fn a_node_without_an_address_on_a_network_is_refused() {
    assert_edit_refused(
        "missing-address",
        &[
            (
                "timeout = \"500ms\"",
                "timeout = \"500ms\"\n\n[[cluster.network]]\nname = \"wan\"",
            ),
            (
                "addresses = { lan = \"10.0.0.1\" }",
                "addresses = { lan = \"10.0.0.1\", wan = \"192.168.0.1\" }",
            ),
        ],
        &[(
            23,
            13,
            r#"cluster.node "beta".addresses: expected an address on network "wan""#,
        )],
    );
}

#[test]
fn a_relative_path_is_refused() {
    assert_edit_refused(
        "relative-script",
        &[(
            "start_both = \"/etc/halo/web/start\"",
            "start_both = \"web/start\"",
        )],
        &[(
            36,
            14,
            r#"module "web".scripts.start_both: expected an absolute path, found "web/start""#,
        )],
    );
}

#[test]
fn a_timeout_of_at_most_twice_the_pulse_is_refused() {
    assert_edit_refused(
        "timeout-2x",
        &[("timeout = \"500ms\"", "timeout = \"200ms\"")],
        &[(
            12,
            11,
            r#"cluster.network "lan".timeout: expected more than twice the pulse (more than 200ms), found 200ms"#,
        )],
    );
}

#[test]
fn several_problems_are_all_reported_in_line_order() {
    // Broken from the bottom up, so that the order of the report is the
    // file's and not the order the problems were found or written in.
    let scratch = Scratch::new("several");
    let state_dir = format!("state_dir = \"{}/state\"", scratch.dir.display());
    let text = edit(
        &base(&scratch.dir),
        &[
            ("interval = \"1s\"", "interval = \"1s\"\ncolour = \"red\""),
            ("proto = \"tcp\"", "proto = \"sctp\""),
            (
                "addresses = { lan = \"10.0.0.2\" }",
                "addresses = { lan = \"10.0.0.x\" }",
            ),
            ("pulse = \"100ms\"", "pulse = \"fast\""),
            (&state_dir, "state_dir = \"relative\""),
        ],
    );
    assert_problems(
        &scratch,
        &text,
        &[
            (
                3,
                13,
                r#"node.state_dir: expected an absolute path, found "relative""#,
            ),
            (
                11,
                9,
                r#"cluster.network "lan".pulse: expected a duration like "500ms" or "30s", found "fast""#,
            ),
            (
                20,
                21,
                r#"cluster.node "beta".addresses.lan: expected an IPv4 or IPv6 address like "10.0.0.1", found "10.0.0.x""#,
            ),
            (
                32,
                9,
                r#"module "web".rule[0].proto: expected "tcp" or "udp", found "sctp""#,
            ),
            (
                42,
                1,
                r#"module "web".checker[0].colour: unknown key "colour": expected one of "name", "regex", "atleast", "interval", "action", "kind""#,
            ),
        ],
    );
}

#[test]
fn missing_sections_are_reported_after_the_placed_problems_without_a_position() {
    let scratch = Scratch::new("missing-sections");
    let text = "[node]\nname = \"alpha\"\nstate_dir = \"var/lib/halo\"\n";
    let file = scratch.write("halo.toml", text);
    let shown = file.display();
    let stderr = format!(
        "halo: invalid configuration:\n\
         {shown}:3:13: node.state_dir: expected an absolute path, found \"var/lib/halo\"\n\
         {shown}: cluster.network: missing key \"network\": expected at least one heartbeat network ([[cluster.network]])\n\
         {shown}: cluster.node: missing key \"node\": expected at least 2 nodes ([[cluster.node]])\n"
    );
    assert_refused_with(&scratch, &file, &stderr);
}

#[test]
fn an_unreadable_file_exits_64_and_says_why_it_could_not_be_read() {
    let scratch = Scratch::new("unreadable");
    let missing = scratch.dir.join("absent.toml");
    let not_utf8 = scratch.write("latin1.toml", b"[node]\nname = \"caf\xe9\"\n");
    let directory = scratch.dir.join("a-directory");
    fs::create_dir(&directory).unwrap();
    for (file, why) in [
        (&missing, "No such file or directory (os error 2)"),
        (&directory, "Is a directory (os error 21)"),
        (&not_utf8, "stream did not contain valid UTF-8"),
    ] {
        let stderr = format!(
            "halo: cannot read configuration {}: {why}\n",
            file.display()
        );
        assert_refused_with(&scratch, file, &stderr);
    }
}
