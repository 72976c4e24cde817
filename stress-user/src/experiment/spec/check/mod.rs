//! From the file as written to the checked experiment: each table is checked against the
//! others (a victim names an app, `charged_within` needs a sized injection), and the first
//! problem is reported at its line.

mod expect;
mod inject;
mod target;

use std::time::Duration;

use toml::Spanned;

use self::{expect::check_expect, inject::check_inject, target::check_target};
use super::{
    context::{Ctx, SpecError},
    model::{App, AppKind, Expectations, Experiment, Inject, Stage, Target},
    raw::{RawApp, RawFile, RawStage},
};
use crate::{cgroup::Version, inject::control::Pace};

pub(super) fn check(cx: &Ctx<'_>, raw: RawFile) -> Result<Experiment, SpecError> {
    let target = check_target(cx, &raw.target)?;
    let limit = match &target {
        Target::Scratch { limit, .. } => *limit,
        _ => None,
    };
    let apps = check_apps(cx, &raw.apps)?;
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
        allow_group_kill: raw.allow_group_kill.unwrap_or(false),
        runtime: crate::runtime::RuntimeArgs {
            containerd_socket: raw
                .target
                .get_ref()
                .containerd_socket
                .clone()
                .map(Into::into),
            docker_socket: raw.target.get_ref().docker_socket.clone().map(Into::into),
        },
    })
}

/// Each app, with a name that neither another app nor a `victim` keyword holds.
fn check_apps(cx: &Ctx<'_>, raw: &[Spanned<RawApp>]) -> Result<Vec<App>, SpecError> {
    let mut apps = Vec::new();
    for (i, a) in raw.iter().enumerate() {
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
    Ok(apps)
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
}
