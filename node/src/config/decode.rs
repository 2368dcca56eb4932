//! From the parsed TOML document to the schema's types, collecting every structural problem.
//!
//! serde stops at the first error of a value. To report them all, the decoder finds the key or
//! array element the error's span points at, records the problem, drops that key from a working
//! copy and decodes again, so that one bad key never hides another; the dropped keys are
//! remembered as damaged so that validation stays quiet about what it cannot see. The tagged
//! tables (`kind = …`) are dispatched here, because serde's internally tagged enums buffer their
//! content and lose the position of errors inside it.

use std::ops::Range;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml_edit::{de, DocumentMut, Item};

use super::error::{Issue, KeyPath, Step};
use super::schema::{
    ArbiterWitness, Checker, CommandChecker, Config, FarmModule, HttpChecker, InterfaceChecker,
    MirrorModule, Module, PingWitness, ProcessChecker, TcpChecker, VipChecker, Witness,
};

type Span = Range<usize>;

/// What decoding a document gives: as much configuration as could be read, and its problems.
pub(super) struct Decoded {
    pub(super) config: Config,
    /// For each of `config.modules`, its index among the file's `[[module]]`s.
    pub(super) module_index: Vec<usize>,
    pub(super) issues: Vec<Issue>,
    /// Keys dropped, or tables not decoded, because of a problem.
    pub(super) damaged: Vec<KeyPath>,
}

/// Decodes the document whose root is `root`.
pub(super) fn decode(root: &Item) -> Decoded {
    let mut decoder = Decoder {
        issues: Vec::new(),
        damaged: Vec::new(),
    };
    let top = KeyPath::default();
    let mut rest = root.clone();
    let module_items = take(&mut rest, "module");
    let mut config: Config = decoder.table(&rest, &top, &["module"]).unwrap_or_default();
    let mut module_index = Vec::new();
    if let Some(items) = module_items {
        for (i, item) in decoder.elements(&items, &top.key("module")) {
            if let Some(module) = decoder.module(&item, &top.key("module").index(i)) {
                config.modules.push(module);
                module_index.push(i);
            }
        }
    }
    Decoded {
        config,
        module_index,
        issues: decoder.issues,
        damaged: decoder.damaged,
    }
}

struct Decoder {
    issues: Vec<Issue>,
    damaged: Vec<KeyPath>,
}

impl Decoder {
    fn problem(&mut self, span: Option<Span>, path: KeyPath, message: String) {
        self.damaged.push(path.clone());
        self.issues.push(Issue {
            span,
            path,
            message,
        });
    }

    /// Decodes the table `item` (at `at`) into `T`, recording every problem serde finds in it.
    /// `loader_keys` are the keys of the table that this module decodes itself.
    fn table<T: DeserializeOwned>(
        &mut self,
        item: &Item,
        at: &KeyPath,
        loader_keys: &[&str],
    ) -> Option<T> {
        let mut work = item.clone();
        loop {
            let error = match deserialize::<T>(work.clone()) {
                Ok(value) => return Some(value),
                Err(error) => error,
            };
            let span = error.span();
            let found = span.as_ref().and_then(|span| {
                // The path is taken in the original, where array indices have not shifted.
                Some((locate(item, span)?, locate(&work, span)?))
            });
            let Some(((path, on_key), (work_path, _))) = found else {
                let message = describe(error.message(), &[], None);
                self.problem(span.or_else(|| item.span()), at.clone(), message);
                return None;
            };
            // The keys this module decodes itself belong to the top of the table only.
            let loader_keys = if path.0.len() == 1 { loader_keys } else { &[] };
            let found = if on_key { None } else { get(item, &path) };
            let message = describe(error.message(), loader_keys, found);
            self.issues.push(Issue {
                span,
                path: at.join(&path),
                message,
            });
            // A dropped array element shifts the indices after it: the whole array is damaged.
            let mut damaged = path;
            if let Some(Step::Index(_)) = damaged.0.last() {
                damaged.0.pop();
            }
            self.damaged.push(at.join(&damaged));
            if !remove(&mut work, &work_path.0) {
                self.damaged.push(at.clone());
                return None;
            }
        }
    }

    /// The elements of an array of tables (`[[x]]`, or `x = [{…}, …]`), with their indices.
    fn elements(&mut self, item: &Item, at: &KeyPath) -> Vec<(usize, Item)> {
        match item {
            Item::ArrayOfTables(tables) => tables
                .iter()
                .map(|table| Item::Table(table.clone()))
                .enumerate()
                .collect(),
            Item::Value(toml_edit::Value::Array(values)) => values
                .iter()
                .map(|value| Item::Value(value.clone()))
                .enumerate()
                .collect(),
            other => {
                let message = format!("expected an array of tables, found {}", kind_of(other));
                self.problem(other.span(), at.clone(), message);
                Vec::new()
            }
        }
    }

    /// Reads the `kind` of a tagged table; gives it with the rest of the table.
    fn tagged(
        &mut self,
        item: &Item,
        at: &KeyPath,
        kinds: &[&'static str],
    ) -> Option<(&'static str, Item)> {
        let Some(table) = item.as_table_like() else {
            let message = format!("expected a table, found {}", kind_of(item));
            self.problem(item.span(), at.clone(), message);
            return None;
        };
        let expected = alternatives(kinds);
        let Some(value) = table.get("kind") else {
            let message = format!("missing key \"kind\": expected {expected}");
            self.problem(item.span(), at.clone(), message);
            return None;
        };
        let found = match value.as_str() {
            Some(kind) => kinds
                .iter()
                .find(|k| **k == kind)
                .copied()
                .ok_or(format!("\"{kind}\"")),
            None => Err(kind_of(value)),
        };
        match found {
            Ok(kind) => {
                let mut rest = item.clone();
                take(&mut rest, "kind");
                Some((kind, rest))
            }
            Err(found) => {
                let message = format!("expected {expected}, found {found}");
                self.problem(value.span(), at.key("kind"), message);
                None
            }
        }
    }

    fn module(&mut self, item: &Item, at: &KeyPath) -> Option<Module> {
        let (kind, mut rest) = self.tagged(item, at, &["farm", "mirror"])?;
        let checkers = match take(&mut rest, "checker") {
            Some(items) => self.checkers(&items, &at.key("checker")),
            None => Vec::new(),
        };
        if kind == "farm" {
            let mut farm: FarmModule = self.table(&rest, at, &["kind", "checker"])?;
            farm.checkers = checkers;
            return Some(Module::Farm(farm));
        }
        let witness = match take(&mut rest, "witness") {
            Some(item) => self.witness(&item, &at.key("witness")),
            None => None,
        };
        let mut mirror: MirrorModule = self.table(&rest, at, &["kind", "checker", "witness"])?;
        mirror.checkers = checkers;
        mirror.witness = witness;
        Some(Module::Mirror(mirror))
    }

    fn checkers(&mut self, items: &Item, at: &KeyPath) -> Vec<Checker> {
        let kinds = ["process", "tcp", "http", "command", "interface", "vip"];
        let mut checkers = Vec::new();
        let elements = self.elements(items, at);
        let count = elements.len();
        for (i, item) in elements {
            let at = at.index(i);
            let Some((kind, rest)) = self.tagged(&item, &at, &kinds) else {
                continue;
            };
            let checker = match kind {
                "process" => self
                    .table::<ProcessChecker>(&rest, &at, &["kind"])
                    .map(Checker::Process),
                "tcp" => self
                    .table::<TcpChecker>(&rest, &at, &["kind"])
                    .map(Checker::Tcp),
                "http" => self
                    .table::<HttpChecker>(&rest, &at, &["kind"])
                    .map(Checker::Http),
                "command" => self
                    .table::<CommandChecker>(&rest, &at, &["kind"])
                    .map(Checker::Command),
                "interface" => self
                    .table::<InterfaceChecker>(&rest, &at, &["kind"])
                    .map(Checker::Interface),
                _ => self
                    .table::<VipChecker>(&rest, &at, &["kind"])
                    .map(Checker::Vip),
            };
            checkers.extend(checker);
        }
        if checkers.len() != count {
            // Validation numbers checkers by their place in the list, which has a gap now.
            self.damaged.push(at.clone());
        }
        checkers
    }

    fn witness(&mut self, item: &Item, at: &KeyPath) -> Option<Witness> {
        match self.tagged(item, at, &["ping", "arbiter"])? {
            ("ping", rest) => self
                .table::<PingWitness>(&rest, at, &["kind"])
                .map(Witness::Ping),
            (_, rest) => self
                .table::<ArbiterWitness>(&rest, at, &["kind"])
                .map(Witness::Arbiter),
        }
    }
}

/// Runs serde over a table, keeping the spans the parser gave it.
fn deserialize<T: DeserializeOwned>(item: Item) -> Result<T, de::Error> {
    match item {
        Item::Table(table) => T::deserialize(de::Deserializer::from(DocumentMut::from(table))),
        Item::Value(value) => T::deserialize(value.into_deserializer()),
        other => Err(serde::de::Error::custom(format!(
            "expected a table, found {}",
            kind_of(&other)
        ))),
    }
}

/// Takes `key` out of the table `item`.
fn take(item: &mut Item, key: &str) -> Option<Item> {
    item.as_table_like_mut()?.remove(key)
}

/// The children of a table or array: the step to each, the span of its key, the child.
fn children(item: &Item) -> Vec<(Step, Option<Span>, &Item)> {
    if let Some(table) = item.as_table_like() {
        return table
            .iter()
            .map(|(key, child)| {
                let key_span = table.key(key).and_then(|k| k.span());
                (Step::Key(key.to_owned()), key_span, child)
            })
            .collect();
    }
    let len = match item {
        Item::ArrayOfTables(tables) => tables.len(),
        Item::Value(toml_edit::Value::Array(values)) => values.len(),
        _ => 0,
    };
    (0..len)
        .filter_map(|i| Some((Step::Index(i), None, item.get(i)?)))
        .collect()
}

/// The path, below `item`, of the key or value whose text is `span`; `true` if it is the key.
fn locate(item: &Item, span: &Span) -> Option<(KeyPath, bool)> {
    for (step, key_span, child) in children(item) {
        let on_key = key_span.as_ref() == Some(span);
        if on_key || child.span().as_ref() == Some(span) {
            return Some((KeyPath(vec![step]), on_key));
        }
        if let Some((mut path, on_key)) = locate(child, span) {
            path.0.insert(0, step);
            return Some((path, on_key));
        }
    }
    None
}

/// Removes what `path` points at; false if there is nothing there.
fn remove(item: &mut Item, path: &[Step]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut parent = item;
    for step in parents {
        let child = match step {
            Step::Key(key) => parent.get_mut(key.as_str()),
            Step::Index(i) => parent.get_mut(*i),
        };
        match child {
            Some(child) => parent = child,
            None => return false,
        }
    }
    match (last, parent) {
        (Step::Key(key), parent) => take(parent, key).is_some(),
        (Step::Index(i), Item::ArrayOfTables(tables)) if *i < tables.len() => {
            tables.remove(*i);
            true
        }
        (Step::Index(i), Item::Value(toml_edit::Value::Array(values))) if *i < values.len() => {
            values.remove(*i);
            true
        }
        _ => false,
    }
}

/// What `path` names below `item`, if the document has it.
pub(super) fn get<'i>(item: &'i Item, path: &KeyPath) -> Option<&'i Item> {
    path.0.iter().try_fold(item, |item, step| match step {
        Step::Key(key) => item.get(key.as_str()),
        Step::Index(i) => item.get(*i),
    })
}

/// The byte range of the key that ends `path`, if the document has it.
pub(super) fn key_span(root: &Item, path: &KeyPath) -> Option<Span> {
    let (Step::Key(key), parent) = path.0.split_last()? else {
        return None;
    };
    let parent = get(root, &KeyPath(parent.to_vec()))?;
    parent.as_table_like()?.key(key)?.span()
}

/// The byte range of the text of what `path` names, or of the closest enclosing thing that the
/// file has (a missing key points at its table).
pub(super) fn span_of(root: &Item, path: &KeyPath) -> Option<Span> {
    let mut best = None;
    let mut current = root;
    for step in &path.0 {
        let (key_span, child) = match step {
            Step::Key(key) => match current.as_table_like().and_then(|t| t.get_key_value(key)) {
                Some((key, child)) => (key.span(), child),
                None => break,
            },
            Step::Index(i) => match current.get(*i) {
                Some(child) => (None, child),
                None => break,
            },
        };
        best = child.span().or(key_span).or(best);
        current = child;
    }
    best
}

/// How a problem at `path` is shown: `module "web".rule[0].port`, naming the modules, nodes and
/// networks that have a name.
pub(super) fn display_path(root: &Item, path: &KeyPath) -> String {
    let mut shown = String::new();
    let mut current = Some(root);
    for (n, step) in path.0.iter().enumerate() {
        let next = current.and_then(|item| match step {
            Step::Key(key) => item.get(key.as_str()),
            Step::Index(i) => item.get(*i),
        });
        match step {
            Step::Key(key) => {
                if !shown.is_empty() {
                    shown.push('.');
                }
                shown.push_str(key);
            }
            Step::Index(i) => {
                let name = next
                    .filter(|_| is_named_array(&path.0[..n]))
                    .and_then(|element| element.get("name")?.as_str())
                    .filter(|name| !name.is_empty());
                match name {
                    Some(name) => shown.push_str(&format!(" \"{name}\"")),
                    None => shown.push_str(&format!("[{i}]")),
                }
            }
        }
        current = next;
    }
    shown
}

fn is_named_array(path: &[Step]) -> bool {
    let keys: Vec<&str> = path
        .iter()
        .map(|step| match step {
            Step::Key(key) => key.as_str(),
            Step::Index(_) => "",
        })
        .collect();
    matches!(
        keys.as_slice(),
        ["module"] | ["cluster", "node"] | ["cluster", "network"]
    )
}

/// What kind of TOML value `item` is, for messages.
fn kind_of(item: &Item) -> String {
    match item {
        Item::None => "nothing".to_owned(),
        Item::Table(_) => "a table".to_owned(),
        Item::ArrayOfTables(_) => "an array of tables".to_owned(),
        Item::Value(value) => match value {
            toml_edit::Value::String(s) => format!("string \"{}\"", s.value()),
            toml_edit::Value::Integer(i) => format!("integer {}", i.value()),
            toml_edit::Value::Float(f) => format!("float {}", f.value()),
            toml_edit::Value::Boolean(b) => format!("boolean {}", b.value()),
            toml_edit::Value::Datetime(d) => format!("datetime {}", d.value()),
            toml_edit::Value::Array(_) => "an array".to_owned(),
            toml_edit::Value::InlineTable(_) => "a table".to_owned(),
        },
    }
}

/// `"a"`, `"a" or "b"`, `one of "a", "b", "c"`.
fn alternatives<S: AsRef<str>>(names: &[S]) -> String {
    let quoted: Vec<String> = names
        .iter()
        .map(|n| format!("\"{}\"", n.as_ref()))
        .collect();
    match quoted.as_slice() {
        [one] => one.clone(),
        [a, b] => format!("{a} or {b}"),
        _ => format!("one of {}", quoted.join(", ")),
    }
}

/// Rewrites serde's messages in the configuration's words: keys, tables, arrays, "expected …,
/// found …". `found` is the offending value, `None` when the error points at a key.
fn describe(message: &str, loader_keys: &[&str], found: Option<&Item>) -> String {
    // serde quotes names between backticks: "unknown field `x`, expected one of `a`, `b`".
    let quoted: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    if message.starts_with("unknown field") {
        let (key, known) = quoted
            .split_first()
            .map_or(("", &[][..]), |(k, rest)| (*k, rest));
        let mut known: Vec<&str> = known.to_vec();
        known.extend(loader_keys);
        return match closest(key, &known) {
            Some(near) => format!("unknown key \"{key}\": did you mean \"{near}\"?"),
            None if known.is_empty() => format!("unknown key \"{key}\": this table takes no keys"),
            None => format!("unknown key \"{key}\": expected {}", alternatives(&known)),
        };
    }
    if message.starts_with("unknown variant") {
        if let Some((found, expected)) = quoted.split_first() {
            return format!("expected {}, found \"{found}\"", alternatives(expected));
        }
    }
    // toml_edit's words for a value that is neither a string nor a table where a choice of
    // strings is expected.
    if let (true, Some(found)) = (message.starts_with("wanted "), found) {
        return format!("expected a string, found {}", kind_of(found));
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((found, expected)) = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once(", expected "))
        {
            return format!(
                "expected {}, found {}",
                plain(expected),
                plain(&found.replace('`', ""))
            );
        }
    }
    message.to_owned()
}

/// serde's names of types, in TOML's.
fn plain(what: &str) -> String {
    let first = what.split_whitespace().next().unwrap_or("");
    match first {
        "struct" | "map" | "a map" => "a table".to_owned(),
        "sequence" => "an array".to_owned(),
        "floating" => what.replacen("floating point", "float", 1),
        _ => match what {
            "a sequence" => "an array".to_owned(),
            "u8" | "u16" | "u32" | "u64" | "usize" => {
                format!("a whole number from 0 to {}", max_of(what))
            }
            _ => what.to_owned(),
        },
    }
}

fn max_of(unsigned: &str) -> u64 {
    match unsigned {
        "u8" => u8::MAX.into(),
        "u16" => u16::MAX.into(),
        "u32" => u32::MAX.into(),
        _ => u64::MAX,
    }
}

/// The known key closest to a misspelt one, if it is close enough to be what was meant: a few
/// letters apart, or one a longer form of the other (`start_primary` for `start_prim`).
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let longer_form = |candidate: &str| {
        candidate.len() >= 3 && (key.starts_with(candidate) || candidate.starts_with(key))
    };
    known
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, candidate)| {
            *distance <= 1.max(candidate.len() / 4) || longer_form(candidate)
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}
