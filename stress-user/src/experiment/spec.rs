//! Experiment files: TOML read with serde (unknown keys refused), then checked as a whole so an
//! impossible combination is reported with the line it is on, before anything is created.

use std::{fmt, ops::Range, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    cgroup::Version,
    inject::{alloc::Kind, control::Pace, plan::OnOom},
    size::{human, SizeSpec},
};

/// A problem in an experiment file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct SpecError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let upto = &text[..offset.min(text.len())];
    let line = upto.matches('\n').count() + 1;
    let column = upto
        .rfind('\n')
        .map_or(upto.len(), |nl| upto.len() - nl - 1)
        + 1;
    (line, column)
}

// ---- The file as written ------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: Option<String>,
    description: Option<String>,
    target: Spanned<RawTarget>,
    #[serde(default)]
    apps: Vec<Spanned<RawApp>>,
    #[serde(default)]
    stages: Vec<Spanned<RawStage>>,
    expect: Option<Spanned<RawExpect>>,
    /// Printed at the end of a run, in plain words.
    conclusion: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    scratch: Option<Spanned<bool>>,
    cgroup: Option<Spanned<String>>,
    pod: Option<Spanned<String>>,
    container: Option<Spanned<String>>,
    pid: Option<Spanned<i32>>,
    memory_limit: Option<Spanned<String>>,
    memory_high: Option<Spanned<String>>,
    oom_group: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: Option<String>,
    /// A command line (argv), started inside the target.
    command: Option<Spanned<Vec<String>>>,
    /// The built-in `oomlab app`: hold this much.
    size: Option<Spanned<String>>,
    oom_score_adj: Option<Spanned<i32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    name: Option<String>,
    inject: Option<Spanned<RawInject>>,
    hold: Option<Spanned<String>>,
    /// Watch for this long after the injection is released.
    settle: Option<Spanned<String>>,
    expect: Option<Spanned<RawExpect>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInject {
    size: Option<Spanned<String>>,
    working_set: Option<Spanned<String>>,
    workers: Option<Spanned<u32>>,
    ramp: Option<Spanned<String>>,
    rate: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    oom_score_adj: Option<Spanned<RawAdj>>,
    on_oom: Option<Spanned<String>>,
}

/// A number, or `"lowest"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawAdj {
    Value(i32),
    Word(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    victim: Option<Spanned<String>>,
    max_oom_kills: Option<Spanned<u64>>,
    min_oom_kills: Option<Spanned<u64>>,
    charged_within: Option<Spanned<String>>,
    working_set_below: Option<Spanned<String>>,
    app_survives: Option<Spanned<bool>>,
}

// ---- The checked experiment ----------------------------------------------------------------

/// Where the experiment runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A cgroup made for the run under `oomlab/`, removed at the end.
    Scratch {
        limit: Option<u64>,
        /// v2 `memory.high`.
        memory_high: Option<Located<u64>>,
        /// v2 `memory.oom.group`.
        oom_group: Option<Located<bool>>,
    },
    Cgroup(String),
    Pod(String),
    Container(String),
    Pid(i32),
}

/// A value with the line it came from, for errors found only at run time (e.g. the cgroup
/// version).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AppKind {
    Command(Vec<String>),
    /// `oomlab app --size N`.
    Builtin {
        size: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct App {
    pub name: String,
    pub kind: AppKind,
    pub oom_score_adj: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    Size(SizeSpec),
    WorkingSet(SizeSpec),
}

/// The workers' `oom_score_adj`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adj {
    Value(i32),
    /// -1000 where oomlab holds CAP_SYS_RESOURCE (needed to lower an adj), otherwise its own
    /// adj: the lowest the host lets it give.
    Lowest,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Inject {
    pub amount: Amount,
    pub workers: usize,
    pub pace: Pace,
    pub kind: Kind,
    pub oom_score_adj: Option<Adj>,
    pub on_oom: OnOom,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub name: String,
    pub line: usize,
    pub inject: Option<Inject>,
    /// How long the injection is held once reached (or, without inject, how long to watch).
    pub hold: Duration,
    pub settle: Duration,
    pub expect: Expectations,
}

/// Who the OOM killer must pick first in the scope (`None`: nobody is killed). Later kills,
/// after the first victim's memory is freed, do not decide.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VictimRole {
    Worker,
    /// Any of the experiment's apps.
    App,
    None,
    /// The app with this name.
    Named(String),
}

impl fmt::Display for VictimRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VictimRole::Worker => "worker",
            VictimRole::App => "app",
            VictimRole::None => "none",
            VictimRole::Named(n) => n,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expectations {
    pub victim: Option<VictimRole>,
    pub max_oom_kills: Option<u64>,
    pub min_oom_kills: Option<u64>,
    /// Fraction: 0.02 for "2%".
    pub charged_within: Option<f64>,
    pub working_set_below: Option<u64>,
    pub app_survives: Option<bool>,
    /// Bytes `charged_within` also allows: with `OOMLAB_VM` sizes are scaled down but each
    /// worker process's own cost (binary, stack, page tables, ~1 MiB) is not.
    pub charged_allowance: u64,
    /// Line of the table, for reports.
    pub line: usize,
}

impl Expectations {
    pub fn is_empty(&self) -> bool {
        self.victim.is_none()
            && self.max_oom_kills.is_none()
            && self.min_oom_kills.is_none()
            && self.charged_within.is_none()
            && self.working_set_below.is_none()
            && self.app_survives.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    pub name: String,
    pub description: Option<String>,
    pub target: Target,
    pub apps: Vec<App>,
    pub stages: Vec<Stage>,
    /// Over the whole run.
    pub expect: Expectations,
    pub conclusion: Option<String>,
    /// Where it came from (a path, or `built-in demo`).
    pub source: String,
}

/// Scales sizes for slow emulated machines (`OOMLAB_VM=1`: the test VMs): every absolute size
/// (limits, apps, injections, thresholds) is divided by this.
pub const VM_SCALE: u64 = 8;

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    scale: u64,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> SpecError {
        let (line, column) = line_col(self.text, span.start);
        SpecError {
            file: self.file.into(),
            line,
            column,
            message: message.into(),
        }
    }

    fn line(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }

    fn size(&self, key: &str, s: &Spanned<String>) -> Result<SizeSpec, SpecError> {
        match SizeSpec::parse(s.get_ref()) {
            Ok(SizeSpec::Bytes(b)) => Ok(SizeSpec::Bytes((b / self.scale).max(4096))),
            Ok(p) => Ok(p),
            Err(e) => Err(self.err(s.span(), format!("`{key}`: {e}"))),
        }
    }

    fn bytes(&self, key: &str, s: &Spanned<String>) -> Result<u64, SpecError> {
        match self.size(key, s)? {
            SizeSpec::Bytes(b) => Ok(b),
            SizeSpec::Percent(_) => Err(self.err(
                s.span(),
                format!("`{key}` must be an absolute size (e.g. 500MiB), not a percentage"),
            )),
        }
    }

    fn duration(&self, key: &str, s: &Spanned<String>) -> Result<Duration, SpecError> {
        humantime::parse_duration(s.get_ref().trim()).map_err(|e| {
            self.err(
                s.span(),
                format!(
                    "`{key}`: invalid duration {:?} ({e}); write e.g. 500ms, 5s, 1m",
                    s.get_ref()
                ),
            )
        })
    }

    fn adj(&self, key: &str, a: &Spanned<i32>) -> Result<i32, SpecError> {
        let v = *a.get_ref();
        if (-1000..=1000).contains(&v) {
            Ok(v)
        } else {
            Err(self.err(
                a.span(),
                format!("`{key}` = {v} is out of range: oom_score_adj goes from -1000 to 1000"),
            ))
        }
    }
}

/// Reads an experiment from TOML text. `file` names it in errors. With `vm_scale`, absolute
/// sizes are divided by [`VM_SCALE`] (see `OOMLAB_VM`).
pub fn parse(file: &str, text: &str, vm_scale: bool) -> Result<Experiment, SpecError> {
    let cx = Ctx {
        file,
        text,
        scale: if vm_scale { VM_SCALE } else { 1 },
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        cx.err(span, e.message().trim().to_string())
    })?;
    check(&cx, raw)
}

fn check(cx: &Ctx<'_>, raw: RawFile) -> Result<Experiment, SpecError> {
    let target = check_target(cx, &raw.target)?;
    let limit = match &target {
        Target::Scratch { limit, .. } => *limit,
        _ => None,
    };
    let mut apps = Vec::new();
    for (i, a) in raw.apps.iter().enumerate() {
        let app = check_app(cx, i, a)?;
        if apps.iter().any(|x: &App| x.name == app.name)
            || ["worker", "app", "none"].contains(&app.name.as_str())
        {
            return Err(cx.err(
                a.span(),
                format!("app name {:?} is taken (by another app, or a `victim` keyword: worker, app, none); choose another", app.name),
            ));
        }
        apps.push(app);
    }
    let names: Vec<String> = apps.iter().map(|a: &App| a.name.clone()).collect();
    let mut stages = Vec::new();
    for (i, s) in raw.stages.iter().enumerate() {
        stages.push(check_stage(cx, i, s, limit, &names)?);
    }
    if stages.is_empty() {
        return Err(cx.err(
            raw.target.span(),
            "the experiment has no [[stages]]: add at least one, e.g. [[stages]] inject = { size = \"100MiB\" } hold = \"5s\"",
        ));
    }
    let expect = match &raw.expect {
        Some(e) => {
            let sizes: Vec<&Inject> = stages.iter().filter_map(|s| s.inject.as_ref()).collect();
            check_expect(cx, e, &sizes, limit, &names)?
        }
        None => Expectations::default(),
    };
    Ok(Experiment {
        name: raw.name.unwrap_or_else(|| "experiment".into()),
        description: raw.description,
        target,
        apps,
        stages,
        expect,
        conclusion: raw.conclusion,
        source: cx.file.into(),
    })
}

fn check_target(cx: &Ctx<'_>, t: &Spanned<RawTarget>) -> Result<Target, SpecError> {
    let r = t.get_ref();
    let mut chosen: Vec<(&str, Range<usize>)> = Vec::new();
    if let Some(s) = &r.scratch {
        if !*s.get_ref() {
            return Err(cx.err(
                s.span(),
                "`scratch = false` says nothing: leave it out and name an existing target (cgroup, pod, container or pid)",
            ));
        }
        chosen.push(("scratch", s.span()));
    }
    if let Some(s) = &r.cgroup {
        chosen.push(("cgroup", s.span()));
    }
    if let Some(s) = &r.pod {
        chosen.push(("pod", s.span()));
    }
    if let Some(s) = &r.container {
        chosen.push(("container", s.span()));
    }
    if let Some(s) = &r.pid {
        chosen.push(("pid", s.span()));
    }
    match chosen.len() {
        0 => {
            return Err(cx.err(
                t.span(),
                "[target] needs one of: scratch = true (with memory_limit), cgroup, pod, container, pid",
            ))
        }
        1 => {}
        _ => {
            return Err(cx.err(
                chosen[1].1.clone(),
                format!(
                    "[target] names more than one target ({}); keep one",
                    chosen.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
                ),
            ))
        }
    }
    if r.scratch.is_none() {
        // Never change the settings of a cgroup oomlab did not create.
        for (key, span) in [
            ("memory_limit", r.memory_limit.as_ref().map(|s| s.span())),
            ("memory_high", r.memory_high.as_ref().map(|s| s.span())),
            ("oom_group", r.oom_group.as_ref().map(|s| s.span())),
        ] {
            if let Some(span) = span {
                return Err(cx.err(
                    span,
                    format!("`{key}` can only be set on a scratch target (oomlab never changes the settings of a cgroup it did not create); use scratch = true or drop `{key}`"),
                ));
            }
        }
    }
    let existing = |key: &str, s: &Spanned<String>| -> Result<String, SpecError> {
        if s.get_ref().trim().is_empty() {
            Err(cx.err(s.span(), format!("`{key}` is empty")))
        } else {
            Ok(s.get_ref().trim().to_string())
        }
    };
    if let Some(s) = &r.cgroup {
        return Ok(Target::Cgroup(existing("cgroup", s)?));
    }
    if let Some(s) = &r.pod {
        return Ok(Target::Pod(existing("pod", s)?));
    }
    if let Some(s) = &r.container {
        return Ok(Target::Container(existing("container", s)?));
    }
    if let Some(p) = &r.pid {
        return Ok(Target::Pid(*p.get_ref()));
    }
    let limit = r
        .memory_limit
        .as_ref()
        .map(|s| cx.bytes("memory_limit", s))
        .transpose()?;
    let memory_high = match &r.memory_high {
        Some(s) => {
            let v = cx.bytes("memory_high", s)?;
            if let Some(l) = limit {
                if v >= l {
                    return Err(cx.err(
                        s.span(),
                        format!(
                            "memory_high ({}) must be below memory_limit ({}): the kernel throttles at memory.high before it OOM-kills at memory.max",
                            human(v),
                            human(l)
                        ),
                    ));
                }
            }
            Some(Located {
                value: v,
                line: cx.line(&s.span()),
            })
        }
        None => None,
    };
    let oom_group = r.oom_group.as_ref().map(|s| Located {
        value: *s.get_ref(),
        line: cx.line(&s.span()),
    });
    Ok(Target::Scratch {
        limit,
        memory_high,
        oom_group,
    })
}

fn check_app(cx: &Ctx<'_>, i: usize, a: &Spanned<RawApp>) -> Result<App, SpecError> {
    let r = a.get_ref();
    let kind = match (&r.command, &r.size) {
        (Some(c), None) => {
            if c.get_ref().is_empty() || c.get_ref()[0].trim().is_empty() {
                return Err(cx.err(c.span(), "`command` is empty: give the program and its arguments, e.g. [\"sleep\", \"600\"]"));
            }
            AppKind::Command(c.get_ref().clone())
        }
        (None, Some(s)) => AppKind::Builtin {
            size: cx.bytes("size", s)?,
        },
        (Some(c), Some(_)) => {
            return Err(cx.err(
                c.span(),
                "an app has either `command` (your program) or `size` (the built-in `oomlab app`), not both",
            ))
        }
        (None, None) => {
            return Err(cx.err(
                a.span(),
                "an app needs `command = [..]` or `size = \"40MiB\"` (the built-in `oomlab app`)",
            ))
        }
    };
    let oom_score_adj = r
        .oom_score_adj
        .as_ref()
        .map(|x| cx.adj("oom_score_adj", x))
        .transpose()?;
    Ok(App {
        name: r.name.clone().unwrap_or_else(|| format!("app{}", i + 1)),
        kind,
        oom_score_adj,
    })
}

fn check_stage(
    cx: &Ctx<'_>,
    i: usize,
    s: &Spanned<RawStage>,
    limit: Option<u64>,
    apps: &[String],
) -> Result<Stage, SpecError> {
    let r = s.get_ref();
    let inject = r
        .inject
        .as_ref()
        .map(|inj| check_inject(cx, inj))
        .transpose()?;
    let hold = match &r.hold {
        Some(h) => cx.duration("hold", h)?,
        None => {
            return Err(cx.err(
                s.span(),
                "a stage needs `hold` (how long to hold the injection, or to watch without one), e.g. hold = \"5s\"",
            ))
        }
    };
    let ramp = inject.as_ref().and_then(|i| match i.pace {
        Pace::Ramp(d) => Some(d),
        _ => None,
    });
    if hold.is_zero() && ramp.is_none_or(|d| d.is_zero()) {
        let span = r.hold.as_ref().map_or(s.span(), |h| h.span());
        return Err(cx.err(span, "`hold` must be above zero"));
    }
    let settle = r
        .settle
        .as_ref()
        .map(|x| cx.duration("settle", x))
        .transpose()?
        .unwrap_or(Duration::from_millis(500));
    let injects: Vec<&Inject> = inject.iter().collect();
    let expect = r
        .expect
        .as_ref()
        .map(|e| check_expect(cx, e, &injects, limit, apps))
        .transpose()?
        .unwrap_or_default();
    Ok(Stage {
        name: r.name.clone().unwrap_or_else(|| format!("stage {}", i + 1)),
        line: cx.line(&s.span()),
        inject,
        hold,
        settle,
        expect,
    })
}

fn check_inject(cx: &Ctx<'_>, inj: &Spanned<RawInject>) -> Result<Inject, SpecError> {
    let r = inj.get_ref();
    let amount = match (&r.size, &r.working_set) {
        (Some(s), None) => Amount::Size(cx.size("size", s)?),
        (None, Some(w)) => Amount::WorkingSet(cx.size("working_set", w)?),
        (Some(_), Some(w)) => {
            return Err(cx.err(
                w.span(),
                "`inject` has both `size` and `working_set`: a fixed size and a working-set goal exclude each other; keep one",
            ))
        }
        (None, None) => {
            return Err(cx.err(
                inj.span(),
                "`inject` needs `size` (total across workers) or `working_set` (a level to hold)",
            ))
        }
    };
    let workers = match &r.workers {
        Some(w) if *w.get_ref() == 0 || *w.get_ref() > 1024 => {
            return Err(cx.err(w.span(), "`workers` must be between 1 and 1024"))
        }
        Some(w) => *w.get_ref() as usize,
        None => 1,
    };
    let pace = match (&r.ramp, &r.rate) {
        (Some(_), Some(rate)) => {
            return Err(cx.err(
                rate.span(),
                "`inject` has both `ramp` and `rate`; they are two ways to pace the same growth, keep one",
            ))
        }
        (Some(d), None) => {
            let d = cx.duration("ramp", d)?;
            if d.is_zero() {
                Pace::Fast
            } else {
                Pace::Ramp(d)
            }
        }
        (None, Some(rate)) => {
            let t = rate.get_ref().trim();
            let t = t.strip_suffix("/s").unwrap_or(t);
            match SizeSpec::parse(t) {
                Ok(SizeSpec::Bytes(b)) => Pace::Rate((b / cx.scale).max(4096)),
                _ => {
                    return Err(cx.err(
                        rate.span(),
                        format!("`rate` {:?} is not a size per second, e.g. \"100MiB/s\"", rate.get_ref()),
                    ))
                }
            }
        }
        (None, None) => Pace::Fast,
    };
    let kind = match &r.kind {
        Some(k) => match k.get_ref().as_str() {
            "anon" => Kind::Anon,
            "file" => Kind::File,
            "shmem" => Kind::Shmem,
            other => {
                return Err(cx.err(
                    k.span(),
                    format!("`kind` = {other:?}: expected \"anon\", \"file\" or \"shmem\""),
                ))
            }
        },
        None => Kind::Anon,
    };
    let on_oom = match &r.on_oom {
        Some(o) => match o.get_ref().as_str() {
            "stop" => OnOom::Stop,
            "respawn" => OnOom::Respawn,
            "continue" => OnOom::Continue,
            other => {
                return Err(cx.err(
                    o.span(),
                    format!("`on_oom` = {other:?}: expected \"stop\", \"respawn\" or \"continue\""),
                ))
            }
        },
        None => OnOom::Stop,
    };
    let oom_score_adj = match &r.oom_score_adj {
        None => None,
        Some(a) => Some(match a.get_ref() {
            RawAdj::Value(v) => Adj::Value(cx.adj("oom_score_adj", &Spanned::new(a.span(), *v))?),
            RawAdj::Word(w) if w == "lowest" => Adj::Lowest,
            RawAdj::Word(w) => {
                return Err(cx.err(
                    a.span(),
                    format!(
                    "`oom_score_adj` = {w:?}: expected a number from -1000 to 1000, or \"lowest\""
                ),
                ))
            }
        }),
    };
    Ok(Inject {
        amount,
        workers,
        pace,
        kind,
        oom_score_adj,
        on_oom,
    })
}

fn check_expect(
    cx: &Ctx<'_>,
    e: &Spanned<RawExpect>,
    injects: &[&Inject],
    limit: Option<u64>,
    apps: &[String],
) -> Result<Expectations, SpecError> {
    let has_apps = !apps.is_empty();
    let r = e.get_ref();
    let victim = match &r.victim {
        Some(v) => Some(match v.get_ref().as_str() {
            "worker" => VictimRole::Worker,
            "app" => VictimRole::App,
            "none" => VictimRole::None,
            name if apps.iter().any(|a| a == name) => VictimRole::Named(name.to_string()),
            other => {
                return Err(cx.err(
                    v.span(),
                    format!(
                        "`victim` = {other:?}: expected \"worker\", \"app\", \"none\" or the name of an app ({})",
                        if apps.is_empty() { "there is none".to_string() } else { apps.join(", ") }
                    ),
                ))
            }
        }),
        None => None,
    };
    if let (Some(VictimRole::App), Some(v)) = (&victim, &r.victim) {
        if !has_apps {
            return Err(cx.err(
                v.span(),
                "`victim = \"app\"` but the experiment starts no app: add an [[apps]] entry",
            ));
        }
    }
    if let (Some(VictimRole::Worker), Some(v)) = (&victim, &r.victim) {
        if injects.is_empty() {
            return Err(cx.err(
                v.span(),
                "`victim = \"worker\"` but no stage in its scope injects anything, so there is no worker to kill",
            ));
        }
    }
    let max = r.max_oom_kills.as_ref().map(|m| *m.get_ref());
    let min = r.min_oom_kills.as_ref().map(|m| *m.get_ref());
    if let (Some(VictimRole::None), Some(m)) = (&victim, &r.min_oom_kills) {
        if *m.get_ref() > 0 {
            return Err(cx.err(
                m.span(),
                "`min_oom_kills` above 0 contradicts `victim = \"none\"`",
            ));
        }
    }
    if let (Some(VictimRole::Worker | VictimRole::App | VictimRole::Named(_)), Some(m)) =
        (&victim, &r.max_oom_kills)
    {
        if *m.get_ref() == 0 {
            return Err(cx.err(
                m.span(),
                "`max_oom_kills = 0` contradicts a `victim`: a victim needs at least one OOM kill (use victim = \"none\")",
            ));
        }
    }
    if let (Some(lo), Some(hi), Some(m)) = (min, max, &r.min_oom_kills) {
        if lo > hi {
            return Err(cx.err(
                m.span(),
                format!("`min_oom_kills` ({lo}) is above `max_oom_kills` ({hi})"),
            ));
        }
    }
    let charged_within = match &r.charged_within {
        Some(c) => {
            let t = c.get_ref().trim();
            let pct: f64 = t
                .strip_suffix('%')
                .and_then(|p| p.trim().parse().ok())
                .filter(|p: &f64| *p > 0.0 && *p < 100.0)
                .ok_or_else(|| {
                    cx.err(
                        c.span(),
                        format!("`charged_within` = {t:?}: expected a percentage above 0 and below 100, e.g. \"2%\""),
                    )
                })?;
            let sized: Vec<u64> = injects
                .iter()
                .filter_map(|i| match i.amount {
                    Amount::Size(SizeSpec::Bytes(b)) => Some(b),
                    Amount::Size(SizeSpec::Percent(p)) => {
                        limit.map(|l| (l as f64 * p / 100.0) as u64)
                    }
                    Amount::WorkingSet(_) => None,
                })
                .collect();
            if injects
                .iter()
                .all(|i| matches!(i.amount, Amount::WorkingSet(_)))
            {
                return Err(cx.err(
                    c.span(),
                    "`charged_within` compares charged bytes with an injected `size`, but no stage in its scope injects a `size`",
                ));
            }
            if let Some(l) = limit {
                if let Some(b) = sized.iter().find(|&&b| b >= l) {
                    return Err(cx.err(
                        c.span(),
                        format!(
                            "`charged_within` cannot hold: a stage injects {} into a {} limit, so the cgroup OOMs before the size is charged; expect kills instead, or inject less",
                            human(*b),
                            human(l)
                        ),
                    ));
                }
            }
            Some(pct / 100.0)
        }
        None => None,
    };
    let working_set_below = match &r.working_set_below {
        Some(w) => {
            let b = cx.bytes("working_set_below", w)?;
            Some(b)
        }
        None => None,
    };
    let app_survives = match &r.app_survives {
        Some(a) if !has_apps => {
            return Err(cx.err(
                a.span(),
                "`app_survives` but the experiment starts no app: add an [[apps]] entry",
            ))
        }
        Some(a) => {
            if *a.get_ref() && matches!(victim, Some(VictimRole::App | VictimRole::Named(_))) {
                return Err(cx.err(
                    a.span(),
                    "`app_survives = true` contradicts `victim = \"app\"`",
                ));
            }
            Some(*a.get_ref())
        }
        None => None,
    };
    let charged_allowance = if cx.scale > 1 && charged_within.is_some() {
        injects.iter().map(|i| i.workers as u64).max().unwrap_or(1) << 20
    } else {
        0
    };
    Ok(Expectations {
        charged_allowance,
        victim,
        max_oom_kills: max,
        min_oom_kills: min,
        charged_within,
        working_set_below,
        app_survives,
        line: cx.line(&e.span()),
    })
}

impl Experiment {
    /// Run-time checks against the node: the v2-only settings on a v1 memory controller.
    pub fn check_host(&self, version: Version) -> Result<(), SpecError> {
        if let Target::Scratch {
            memory_high,
            oom_group,
            ..
        } = &self.target
        {
            if version == Version::V1 {
                let at = |line: usize, message: String| SpecError {
                    file: self.source.clone(),
                    line,
                    column: 1,
                    message,
                };
                if let Some(h) = memory_high {
                    return Err(at(h.line, "`memory_high` needs cgroup v2 (memory.high), but this node's memory controller is on cgroup v1, which has no such setting".into()));
                }
                if let Some(g) = oom_group {
                    return Err(at(g.line, "`oom_group` needs cgroup v2 (memory.oom.group), but this node's memory controller is on cgroup v1, where the OOM killer always picks one task".into()));
                }
            }
        }
        Ok(())
    }

    /// Needs cgroup v2 (for tests and the kernel matrix).
    pub fn needs_v2(&self) -> bool {
        matches!(&self.target, Target::Scratch { memory_high, oom_group, .. } if memory_high.is_some() || oom_group.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn ok(text: &str) -> Experiment {
        parse("t.toml", text, false).unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(text: &str) -> SpecError {
        match parse("t.toml", text, false) {
            Ok(x) => panic!("expected an error, parsed {x:?}"),
            Err(e) => e,
        }
    }

    const SEED: &str = include_str!("../../../examples/seed-story.toml");

    #[test]
    fn line_and_column() {
        assert_eq!(line_col("ab\ncd\nef", 0), (1, 1));
        assert_eq!(line_col("ab\ncd\nef", 4), (2, 2));
        assert_eq!(line_col("ab\ncd\nef", 6), (3, 1));
    }

    #[test]
    fn every_example_parses() {
        for (name, text) in [
            ("seed-story.toml", SEED),
            (
                "oom-group.toml",
                include_str!("../../../examples/oom-group.toml"),
            ),
            (
                "page-cache.toml",
                include_str!("../../../examples/page-cache.toml"),
            ),
            (
                "working-set-hold.toml",
                include_str!("../../../examples/working-set-hold.toml"),
            ),
            (
                "score-adj.toml",
                include_str!("../../../examples/score-adj.toml"),
            ),
        ] {
            parse(name, text, false).unwrap_or_else(|e| panic!("{e}"));
            parse(name, text, true).unwrap_or_else(|e| panic!("{e} (vm scale)"));
        }
    }

    #[test]
    fn seed_story_is_the_blog_setup() {
        let x = ok(SEED);
        assert!(matches!(x.target, Target::Scratch { limit: Some(l), .. } if l == 500 * MIB));
        assert_eq!(x.apps.len(), 1);
        assert_eq!(x.apps[0].oom_score_adj, Some(988));
        assert_eq!(x.apps[0].kind, AppKind::Builtin { size: 40 * MIB });
        assert_eq!(x.stages.len(), 3);
        let s1 = x.stages[0].inject.as_ref().expect("stage 1 injects");
        assert_eq!(s1.amount, Amount::Size(SizeSpec::Bytes(200 * MIB)));
        assert_eq!(s1.workers, 4);
        assert_eq!(x.stages[0].expect.charged_within, Some(0.02));
        let s2 = x.stages[1].inject.as_ref().expect("stage 2 injects");
        assert_eq!(s2.on_oom, OnOom::Respawn);
        assert_eq!(x.stages[1].expect.victim, Some(VictimRole::Worker));
        let s3 = x.stages[2].inject.as_ref().expect("stage 3 injects");
        assert_eq!(s3.oom_score_adj, Some(Adj::Lowest));
        assert_eq!(x.stages[2].expect.victim, Some(VictimRole::App));
        assert!(x.conclusion.is_some());
    }

    #[test]
    fn vm_scale_divides_sizes() {
        let x = parse("t", SEED, true).expect("parses");
        assert!(
            matches!(x.target, Target::Scratch { limit: Some(l), .. } if l == 500 * MIB / VM_SCALE)
        );
        assert_eq!(x.apps[0].kind, AppKind::Builtin { size: 5 * MIB });
        // The per-process cost of the 4 workers does not scale: charged_within allows it.
        assert_eq!(x.stages[0].expect.charged_allowance, 4 * MIB);
        assert_eq!(ok(SEED).stages[0].expect.charged_allowance, 0);
    }

    const MIN: &str = "[target]\nscratch = true\nmemory_limit = \"100MiB\"\n\n[[stages]]\ninject = { size = \"10MiB\" }\nhold = \"1s\"\n";

    #[test]
    fn minimal_file_and_defaults() {
        let x = ok(MIN);
        assert_eq!(x.name, "experiment");
        let s = &x.stages[0];
        assert_eq!(s.name, "stage 1");
        assert_eq!(s.line, 5);
        let i = s.inject.as_ref().expect("inject");
        assert_eq!((i.workers, i.kind, i.on_oom), (1, Kind::Anon, OnOom::Stop));
        assert_eq!(i.pace, Pace::Fast);
        assert!(x.expect.is_empty());
    }

    #[test]
    fn unknown_key_names_its_line() {
        let e = err(&format!("{MIN}wrkers = 4\n"));
        assert_eq!(e.line, 8, "{e}");
        assert!(e.message.contains("wrkers"), "{e}");
        let e =
            err("[target]\nscratch = true\nmemory_limt = \"1GiB\"\n[[stages]]\nhold = \"1s\"\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(
            e.message.contains("memory_limt") && e.message.contains("memory_limit"),
            "{e}"
        );
        assert_eq!(e.to_string().split(':').next(), Some("t.toml"));
    }

    #[test]
    fn syntax_error_names_its_line() {
        let e = err("[target]\nscratch = true\nmemory_limit = \"1GiB\n");
        assert_eq!(e.line, 3, "{e}");
    }

    #[test]
    fn wrong_type_names_its_line() {
        let e = err(&MIN.replace(
            "hold = \"1s\"",
            "hold = \"1s\"\nexpect = { max_oom_kills = \"three\" }",
        ));
        assert_eq!(e.line, 8, "{e}");
    }

    #[test]
    fn bad_values_name_their_line() {
        let cases = [
            (
                MIN.replace("\"10MiB\" }", "\"10MiB\", kind = \"heap\" }"),
                6,
                "kind",
            ),
            (
                MIN.replace("\"10MiB\" }", "\"10MiB\", oom_score_adj = 1001 }"),
                6,
                "-1000 to 1000",
            ),
            (
                MIN.replace("\"10MiB\" }", "\"10 potatoes\" }"),
                6,
                "invalid size",
            ),
            (MIN.replace("\"1s\"", "\"soon\""), 7, "invalid duration"),
            (
                MIN.replace("\"10MiB\" }", "\"10MiB\", workers = 0 }"),
                6,
                "workers",
            ),
            (
                MIN.replace("\"10MiB\" }", "\"10MiB\", on_oom = \"retry\" }"),
                6,
                "respawn",
            ),
            (MIN.replace("\"100MiB\"", "\"50%\""), 3, "absolute size"),
        ];
        for (text, line, needle) in cases {
            let e = err(&text);
            assert_eq!(e.line, line, "{e}");
            assert!(e.message.contains(needle), "{needle:?} not in {e}");
        }
    }

    #[test]
    fn impossible_combinations_name_their_line() {
        let cases = [
            (MIN.replace("\"10MiB\" }", "\"10MiB\", working_set = \"20MiB\" }"), 6, "both `size` and `working_set`"),
            (MIN.replace("\"10MiB\" }", "\"10MiB\", ramp = \"1s\", rate = \"1MiB/s\" }"), 6, "both `ramp` and `rate`"),
            (MIN.replace("scratch = true", "scratch = true\ncgroup = \"/x\""), 3, "more than one target"),
            (MIN.replace("scratch = true", "cgroup = \"/x\""), 3, "scratch target"),
            (MIN.replace("memory_limit = \"100MiB\"", "memory_limit = \"100MiB\"\nmemory_high = \"200MiB\""), 4, "below memory_limit"),
            (format!("{MIN}[stages.expect]\nvictim = \"app\"\n"), 9, "no app"),
            (format!("{MIN}[stages.expect]\napp_survives = true\n"), 9, "no app"),
            (format!("{MIN}[stages.expect]\nvictim = \"none\"\nmin_oom_kills = 1\n"), 10, "contradicts"),
            (format!("{MIN}[stages.expect]\nvictim = \"worker\"\nmax_oom_kills = 0\n"), 10, "contradicts"),
            (format!("{}[stages.expect]\ncharged_within = \"2%\"\n", MIN.replace("10MiB", "200MiB")), 9, "cannot hold"),
            (format!("{MIN}[stages.expect]\ncharged_within = \"two\"\n"), 9, "percentage"),
            ("[target]\nscratch = true\n[[stages]]\nhold = \"1s\"\n[stages.expect]\nvictim = \"worker\"\n".to_string(), 6, "no worker"),
            ("[target]\nscratch = true\n".to_string(), 1, "no [[stages]]"),
            ("[target]\nscratch = true\n[[stages]]\ninject = { size = \"1MiB\" }\n".to_string(), 3, "needs `hold`"),
            ("[target]\nscratch = true\n[[apps]]\nname = \"x\"\n[[stages]]\nhold = \"1s\"\n".to_string(), 3, "needs `command"),
        ];
        for (text, line, needle) in cases {
            let e = err(&text);
            assert_eq!(e.line, line, "{needle}: {e}");
            assert!(e.message.contains(needle), "{needle:?} not in {e}");
        }
    }

    #[test]
    fn v2_only_keys_are_refused_on_v1_with_their_line() {
        let x = ok(include_str!("../../../examples/oom-group.toml"));
        assert!(x.needs_v2());
        let e = x
            .check_host(Version::V1)
            .expect_err("v1 has no memory.oom.group");
        assert!(
            e.message.contains("oom_group") && e.message.contains("cgroup v1"),
            "{e}"
        );
        let text = include_str!("../../../examples/oom-group.toml");
        let line = text
            .lines()
            .position(|l| l.trim_start().starts_with("oom_group"))
            .expect("the example sets oom_group")
            + 1;
        assert_eq!(e.line, line);
        x.check_host(Version::V2).expect("fine on v2");
        assert!(!ok(SEED).needs_v2());
    }
}
