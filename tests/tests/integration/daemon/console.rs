//! The web console in a real browser: headless Chromium, driven through
//! chromedriver's WebDriver protocol, runs in a lab host of its own and
//! opens the console of a real cluster: it signs in, reads every node's
//! state, presses swap on a mirror, and paints the mosaic of a 3-node farm.
//! Screenshots go to `target/console-screenshots/`.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{IpAddr, TcpStream},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use halo_tests::{
    cluster::{module_in, Cluster, Timing, API_PORT, TEST_TOKEN},
    lab::{self, Host, LabBuilder, LabProcess},
};
use serde_json::{json, Value};

/// chromedriver's port inside the browser's host.
const DRIVER_PORT: u16 = 9515;
/// The Chromium binary itself (`/usr/bin/chromium` is a wrapper script).
const CHROMIUM: &str = "/usr/lib/chromium/chromium";
/// The key W3C WebDriver names an element reference with.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where the screenshots go: `target/console-screenshots/`.
fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots")
}

/// A headless Chromium session in a lab host. Dropping it ends the
/// session and kills chromedriver and every browser process it started,
/// each by its pid.
struct Browser<'lab> {
    host: &'lab Host,
    driver: Option<LabProcess>,
    session: String,
}

impl<'lab> Browser<'lab> {
    /// Starts chromedriver in `host` and a browser session with a fresh
    /// profile.
    fn start(host: &'lab Host) -> Result<Self> {
        let profile = host.state_dir().join("chromium-profile");
        std::fs::create_dir_all(&profile)
            .with_context(|| format!("create {}", profile.display()))?;
        let driver = host.spawn(
            "chromedriver",
            Command::new("chromedriver")
                .arg(format!("--port={DRIVER_PORT}"))
                .env("HOME", &profile),
        )?;
        let mut browser = Browser {
            host,
            driver: Some(driver),
            session: String::new(),
        };
        lab::wait_until(Duration::from_secs(20), "chromedriver to listen", || {
            Ok(browser.request("GET", "/status", None).is_ok())
        })?;
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1360,1150",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let answer = browser.request(
            "POST",
            "/session",
            Some(json!({
                "capabilities": { "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
                }}
            })),
        )?;
        browser.session = answer["sessionId"]
            .as_str()
            .with_context(|| format!("no sessionId in {answer}"))?
            .to_owned();
        Ok(browser)
    }

    /// One WebDriver call; the answer's `value`. chromedriver keeps the
    /// connection open after its answer: the body ends at its length.
    fn request(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{DRIVER_PORT}\r\n");
        if let Some(body) = body {
            let body = body.to_string();
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        } else {
            request.push_str("\r\n");
        }
        let (head, body) = self.host.enter(|| {
            let mut stream = TcpStream::connect(("127.0.0.1", DRIVER_PORT))?;
            stream.set_read_timeout(Some(Duration::from_secs(90)))?;
            stream.write_all(request.as_bytes())?;
            read_answer(&mut stream)
        })?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status in {head:?}"))?;
        let value: Value = serde_json::from_str(&body)
            .with_context(|| format!("{method} {path}: not JSON: {body:?}"))?;
        if status != 200 {
            bail!("{method} {path}: {status}: {}", value["value"]);
        }
        Ok(value["value"].clone())
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    fn open(&self, url: &str) -> Result<()> {
        self.request(
            "POST",
            &self.session_path("/url"),
            Some(json!({ "url": url })),
        )?;
        Ok(())
    }

    /// Runs `script` (a function body) in the page; its return value.
    fn eval(&self, script: &str) -> Result<Value> {
        self.request(
            "POST",
            &self.session_path("/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// The first element matching `css`.
    fn find(&self, css: &str) -> Result<String> {
        let found = self.request(
            "POST",
            &self.session_path("/element"),
            Some(json!({ "using": "css selector", "value": css })),
        )?;
        Ok(found[ELEMENT]
            .as_str()
            .with_context(|| format!("no element reference in {found}"))?
            .to_owned())
    }

    /// Clicks the element matching `css`, as a user would; finds it again
    /// when the page redrew it in between.
    fn click(&self, css: &str) -> Result<()> {
        let mut last = None;
        for _ in 0..5 {
            let element = self.find(css)?;
            match self.request(
                "POST",
                &self.session_path(&format!("/element/{element}/click")),
                Some(json!({})),
            ) {
                Ok(_) => return Ok(()),
                Err(error) => last = Some(error),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(last.expect("five attempts")).with_context(|| format!("click {css}"))
    }

    /// Types `text` into the element matching `css`.
    fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let element = self.find(css)?;
        self.request(
            "POST",
            &self.session_path(&format!("/element/{element}/value")),
            Some(json!({ "text": text })),
        )?;
        Ok(())
    }

    /// Saves a screenshot of the window as `name`.png; returns its path.
    fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let encoded = self.request("GET", &self.session_path("/screenshot"), None)?;
        let png = base64_decode(encoded.as_str().context("a base64 screenshot")?)?;
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).with_context(|| format!("write {}", path.display()))?;
        eprintln!("screenshot: {}", path.display());
        Ok(path)
    }

    /// Waits until `script` returns true; on timeout saves a screenshot
    /// named `name`-timeout and panics with what the script last returned
    /// and `diagnose`'s script's value.
    fn wait_for(&self, timeout: Duration, name: &str, script: &str, diagnose: &str) {
        let started = Instant::now();
        let mut last = Value::Null;
        while started.elapsed() < timeout {
            match self.eval(script) {
                Ok(Value::Bool(true)) => return,
                Ok(value) => last = value,
                Err(error) => last = Value::String(format!("{error:#}")),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let slug: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let shot = self.screenshot(&format!("timeout-{slug}"));
        let seen = self
            .eval(diagnose)
            .unwrap_or_else(|e| json!(format!("{e:#}")));
        panic!(
            "waited {timeout:?} for {name}: script returned {last}; the page shows {seen:#}; \
             screenshot {shot:?}"
        );
    }

    /// The browser's processes: chromedriver's descendants.
    fn descendants(&self) -> Vec<i32> {
        let Some(driver) = &self.driver else {
            return Vec::new();
        };
        let mut parents: BTreeMap<i32, i32> = BTreeMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
                parents.insert(pid, ppid);
            }
        }
        let mut family: BTreeSet<i32> = BTreeSet::from([driver.pid() as i32]);
        loop {
            let before = family.len();
            for (pid, ppid) in &parents {
                if family.contains(ppid) {
                    family.insert(*pid);
                }
            }
            if family.len() == before {
                break;
            }
        }
        family.remove(&(driver.pid() as i32));
        family.into_iter().collect()
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let browser = self.descendants();
        if !self.session.is_empty() {
            if let Err(error) = self.request("DELETE", &self.session_path(""), None) {
                eprintln!("console test: ending the browser session: {error:#}");
            }
        }
        // Dropping the LabProcess kills and reaps chromedriver.
        self.driver.take();
        for pid in browser {
            // Only what still runs Chromium: a pid freed meanwhile is left alone.
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.starts_with("chrom") {
                // SAFETY: kill(2) with a pid and a signal number has no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Reads one HTTP answer from `stream`: its head, and its body by its
/// `Content-Length` or its chunks.
fn read_answer(stream: &mut TcpStream) -> Result<(String, String)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("the connection closed before the end of the headers");
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut body = raw[head_end + 4..].to_vec();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let complete = |body: &[u8]| -> Option<Vec<u8>> {
        if let Some(length) = header("content-length") {
            let length: usize = length.parse().ok()?;
            return (body.len() >= length).then(|| body[..length].to_vec());
        }
        // Chunked: complete once the last (empty) chunk arrived.
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).ok()?.trim(), 16)
                    .ok()?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                return Some(out);
            }
            if rest.len() < size + 2 {
                return None;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
    };
    loop {
        if let Some(done) = complete(&body) {
            return Ok((head, String::from_utf8(done)?));
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("the connection closed before the end of the body");
        }
        body.extend_from_slice(&buf[..n]);
    }
}

/// Standard base64 (with padding), as WebDriver sends screenshots.
fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let value = |c: u8| -> Result<u32> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("not base64: {:?}", c as char),
        }
        .into())
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for group in clean.chunks(4) {
        let mut bits = 0u32;
        for (i, c) in group.iter().enumerate() {
            bits |= value(*c)? << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    Ok(out)
}

/// The console of `node` at its lab address.
fn console_url(host: &Host, page: &str) -> String {
    format!("http://{}:{API_PORT}{page}", host.ipv4())
}

/// The module rows of the console as `node/module → state/tone`.
const ROWS: &str = "return Object.fromEntries([...document.querySelectorAll('tr[data-module]')]\
    .map(r => [r.dataset.node + '/' + r.dataset.module, r.dataset.state + '/' + r.dataset.tone]));";

/// Signs in with a wrong token (refused), then with the right one.
fn sign_in(browser: &Browser<'_>) {
    browser.wait_for(
        Duration::from_secs(15),
        "the login form",
        "return !document.getElementById('login').hidden;",
        "return document.body.innerText;",
    );
    browser.type_into("#token", "not-the-token").unwrap();
    browser.click("#login-submit").unwrap();
    browser.wait_for(
        Duration::from_secs(10),
        "the wrong token refused",
        "return document.getElementById('login-error').textContent.includes('refused');",
        "return document.getElementById('login-error').textContent;",
    );
    browser
        .eval("document.getElementById('token').value = ''; return true;")
        .unwrap();
    browser.type_into("#token", TEST_TOKEN).unwrap();
    browser.click("#login-submit").unwrap();
}

#[test]
fn the_console_shows_both_mirror_nodes_and_swaps_them() {
    let lab = LabBuilder::new("console")
        .hosts(&["n1", "n2", "browser"])
        .build()
        .unwrap();
    let module = format!(
        "[[module]]\nname = \"db\"\nkind = \"mirror\"\nnodes = [\"n1\", \"n2\"]\n\
         interface = \"eth0\"\nvip = \"{}\"\ndefaultprim = \"n1\"\n\n\
         [[module.dir]]\npath = \"/var/lib/app\"\n",
        lab::lab_ipv4(210)
    );
    lab.host("n1")
        .sh(
            "head -c 3000000 /dev/urandom > /var/lib/app/data; mkdir -p /var/lib/app/docs; \
             for i in $(seq 1 50); do echo $i > /var/lib/app/docs/$i; done",
        )
        .unwrap();
    let mut cluster =
        Cluster::configure(&lab, &["n1", "n2"], 1, Timing::default(), &module).unwrap();
    cluster.start_all().unwrap();
    for (node, state) in [("n1", "PRIM"), ("n2", "SECOND")] {
        cluster
            .wait_status(
                node,
                Duration::from_secs(30),
                &format!("{node} {state}"),
                |s| module_in(s, "db", state, "ready"),
            )
            .unwrap();
    }

    let browser = Browser::start(lab.host("browser")).unwrap();
    browser.open(&console_url(lab.host("n1"), "/")).unwrap();
    browser.screenshot("01-login").unwrap();
    sign_in(&browser);
    browser.wait_for(
        Duration::from_secs(20),
        "n1 PRIM and n2 SECOND, green, both nodes reachable",
        "const r = Object.fromEntries([...document.querySelectorAll('tr[data-module]')]\
            .map(r => [r.dataset.node, r.dataset.state + '/' + r.dataset.tone]));\
         const reachable = document.querySelectorAll('.node[data-reachable=\"true\"]').length;\
         return r.n1 === 'PRIM/ok' && r.n2 === 'SECOND/ok' && reachable === 2;",
        ROWS,
    );
    // The event timeline and the log view have the module's history.
    browser.wait_for(
        Duration::from_secs(10),
        "the timeline and the log",
        "return document.querySelectorAll('#timeline li:not(.empty)').length > 0 \
            && document.getElementById('log').innerText.includes('PRIM');",
        "return [document.getElementById('timeline').innerText, \
            document.getElementById('log').innerText];",
    );
    browser.screenshot("02-mirror-n1-primary").unwrap();

    // Swap: the button asks for a second click, then posts to the primary.
    browser.click("button[data-action=\"swap\"]").unwrap();
    browser
        .click("button[data-action=\"swap\"].confirm")
        .unwrap();
    let mut saw_transient = false;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let rows = browser.eval(ROWS).unwrap();
        if rows
            .as_object()
            .unwrap()
            .values()
            .any(|v| v.as_str().unwrap().ends_with("/busy"))
            && !saw_transient
        {
            saw_transient = true;
            browser.screenshot("03-mirror-swapping").unwrap();
        }
        if rows["n1/db"] == "SECOND/ok" && rows["n2/db"] == "PRIM/ok" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    browser.wait_for(
        Duration::from_secs(5),
        "n2 PRIM and n1 SECOND after swap",
        "const r = Object.fromEntries([...document.querySelectorAll('tr[data-module]')]\
            .map(r => [r.dataset.node, r.dataset.state + '/' + r.dataset.tone]));\
         return r.n1 === 'SECOND/ok' && r.n2 === 'PRIM/ok';",
        ROWS,
    );
    // The daemons agree with the page.
    cluster
        .wait_status("n2", Duration::from_secs(5), "n2 PRIM", |s| {
            module_in(s, "db", "PRIM", "ready")
        })
        .unwrap();
    browser.screenshot("04-mirror-n2-primary").unwrap();

    // A dead node turns red: unreachable.
    cluster.kill("n2").unwrap();
    browser.wait_for(
        Duration::from_secs(20),
        "n2 unreachable",
        "const card = document.querySelector('.node[data-node=\"n2\"]');\
         return card.dataset.reachable === 'false' && card.classList.contains('bad');",
        ROWS,
    );
    browser.screenshot("05-mirror-n2-unreachable").unwrap();
}

/// An HTTP server on port 80 answering every GET with the node's name and
/// letting any page read it (the mosaic runs on the console's origin).
const SERVER: &str = r#"
import http.server, sys
name = sys.argv[1].encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Content-Length", str(len(name)))
        self.end_headers()
        self.wfile.write(name)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 80), Handler).serve_forever()
"#;

#[test]
fn the_mosaic_shows_the_three_farm_nodes_in_three_colours() {
    const NODES: [&str; 3] = ["n1", "n2", "n3"];
    let lab = LabBuilder::new("mosaic")
        .hosts(&["n1", "n2", "n3", "browser"])
        .build()
        .unwrap();
    let _servers: Vec<LabProcess> = NODES
        .iter()
        .map(|n| {
            lab.host(n)
                .spawn(
                    "web",
                    Command::new("/usr/bin/python3").args(["-c", SERVER, n]),
                )
                .unwrap()
        })
        .collect();
    let vip: IpAddr = lab::lab_ipv4(200).into();
    let module = format!(
        "[[module]]\nname = \"web\"\nkind = \"farm\"\ninterface = \"eth0\"\nvips = [\"{vip}\"]\n\
         xdp_mode = \"generic\"\n\n[[module.rule]]\nproto = \"tcp\"\nport = 80\n\
         filter = \"source_port\"\n"
    );
    let mut cluster = Cluster::configure(&lab, &NODES, 1, Timing::default(), &module).unwrap();
    cluster.start_all().unwrap();
    for node in NODES {
        cluster
            .wait_status(
                node,
                Duration::from_secs(20),
                "web UP, both peers up",
                |s| {
                    module_in(s, "web", "UP", "ready")
                        && s.peers.iter().filter(|p| p.up).count() == 2
                },
            )
            .unwrap();
    }

    let browser = Browser::start(lab.host("browser")).unwrap();
    // The console shows the farm's load share on every node.
    browser.open(&console_url(lab.host("n1"), "/")).unwrap();
    sign_in(&browser);
    browser.wait_for(
        Duration::from_secs(20),
        "three nodes UP, each with its load share",
        "const rows = [...document.querySelectorAll('tr[data-module=\"web\"]')];\
         return rows.length === 3 && rows.every(r => r.dataset.state === 'UP' \
            && r.dataset.tone === 'ok' && /\\d+\\.\\d %/.test(r.innerText));",
        ROWS,
    );
    browser.screenshot("06-farm-console").unwrap();

    browser
        .open(&console_url(lab.host("n1"), "/mosaic"))
        .unwrap();
    let url = browser
        .eval("return document.getElementById('url').value;")
        .unwrap();
    assert_eq!(
        url,
        format!("http://{vip}/"),
        "the mosaic's default URL is the farm's VIP"
    );
    browser
        .eval("document.getElementById('count').value = 120; return true;")
        .unwrap();
    browser.click("#start").unwrap();
    browser.wait_for(
        Duration::from_secs(60),
        "every tile painted",
        "const tiles = [...document.querySelectorAll('.tile')];\
         return tiles.length === 120 && tiles.every(t => t.dataset.node !== undefined) \
            && !document.getElementById('start').disabled;",
        "return document.getElementById('legend').innerText + ' | ' \
            + document.getElementById('hint').innerText;",
    );
    let painted = browser
        .eval(
            "return [...document.querySelectorAll('.tile')]\
                .map(t => [t.dataset.node, t.style.backgroundColor]);",
        )
        .unwrap();
    browser.screenshot("07-mosaic").unwrap();
    let mut colours: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for tile in painted.as_array().unwrap() {
        colours
            .entry(tile[0].as_str().unwrap().to_owned())
            .or_default()
            .insert(tile[1].as_str().unwrap().to_owned());
    }
    assert_eq!(
        colours.keys().map(String::as_str).collect::<Vec<_>>(),
        NODES,
        "every tile answered by a farm node, all three answering: {colours:?}"
    );
    let distinct: BTreeSet<&String> = colours.values().flatten().collect();
    assert!(
        colours.values().all(|c| c.len() == 1) && distinct.len() == 3,
        "one colour per node, three in all: {colours:?}"
    );
}
