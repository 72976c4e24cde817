//! `[target]`: exactly one of a scratch cgroup or an existing cgroup, pod, container or pid;
//! limits only on the scratch one, which oomlab creates.

use std::ops::Range;

use toml::Spanned;

use crate::{
    experiment::spec::{
        context::{Ctx, SpecError},
        model::Target,
        raw::RawTarget,
    },
    size::human,
};

pub(super) fn check_target(cx: &Ctx<'_>, t: &Spanned<RawTarget>) -> Result<Target, SpecError> {
    let r = t.get_ref();
    check_one_target(cx, t)?;
    if r.scratch.is_none() {
        refuse_scratch_settings(cx, r)?;
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
    check_scratch(cx, r)
}

/// The table names exactly one target.
fn check_one_target(cx: &Ctx<'_>, t: &Spanned<RawTarget>) -> Result<(), SpecError> {
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
        0 => Err(cx.err(
            t.span(),
            "[target] needs one of: scratch = true (with memory_limit), cgroup, pod, container, pid",
        )),
        1 => Ok(()),
        _ => Err(cx.err(
            chosen[1].1.clone(),
            format!(
                "[target] names more than one target ({}); keep one",
                chosen.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// Never change the settings of a cgroup oomlab did not create.
fn refuse_scratch_settings(cx: &Ctx<'_>, r: &RawTarget) -> Result<(), SpecError> {
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
    Ok(())
}

fn check_scratch(cx: &Ctx<'_>, r: &RawTarget) -> Result<Target, SpecError> {
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
            Some(cx.located(v, &s.span()))
        }
        None => None,
    };
    let oom_group = r
        .oom_group
        .as_ref()
        .map(|s| cx.located(*s.get_ref(), &s.span()));
    Ok(Target::Scratch {
        limit,
        memory_high,
        oom_group,
    })
}
