//! An `expect` table (a stage's, or the whole run's): each expectation must be one the scope
//! can meet — a victim that exists, kill counts that agree, a `charged_within` with a size to
//! compare.

use toml::Spanned;

use crate::{
    experiment::spec::{
        context::{Ctx, SpecError},
        model::{Amount, Expectations, Inject, VictimRole},
        raw::RawExpect,
    },
    size::{human, SizeSpec},
};

/// `injects` are the injections in the table's scope, `apps` the experiment's app names.
pub(super) fn check_expect(
    cx: &Ctx<'_>,
    e: &Spanned<RawExpect>,
    injects: &[&Inject],
    limit: Option<u64>,
    apps: &[String],
) -> Result<Expectations, SpecError> {
    let r = e.get_ref();
    let victim = check_victim(cx, r, injects, apps)?;
    let (min_oom_kills, max_oom_kills) = check_kill_counts(cx, r, victim.as_ref())?;
    let charged_within = r
        .charged_within
        .as_ref()
        .map(|c| check_charged_within(cx, c, injects, limit))
        .transpose()?;
    let working_set_below = r
        .working_set_below
        .as_ref()
        .map(|w| cx.bytes("working_set_below", w))
        .transpose()?;
    let app_survives = check_app_survives(cx, r, !apps.is_empty(), victim.as_ref())?;
    let psi_some_within = r
        .psi_some_within
        .as_ref()
        .map(|w| check_psi_within(cx, w))
        .transpose()?;
    let psi_full_within = r
        .psi_full_within
        .as_ref()
        .map(|w| check_psi_within(cx, w))
        .transpose()?;
    let charged_allowance = if cx.scale > 1 && charged_within.is_some() {
        injects.iter().map(|i| i.workers as u64).max().unwrap_or(1) << 20
    } else {
        0
    };
    Ok(Expectations {
        charged_allowance,
        victim,
        max_oom_kills,
        min_oom_kills,
        charged_within,
        working_set_below,
        app_survives,
        psi_some_within,
        psi_full_within,
        line: cx.line(&e.span()),
    })
}

/// `"10%±3"` (or `+-3`): a level in (0, 100) % and a tolerance in points.
fn check_psi_within(cx: &Ctx<'_>, w: &Spanned<String>) -> Result<(f64, f64), SpecError> {
    parse_psi_within(w.get_ref()).ok_or_else(|| {
        cx.err(
            w.span(),
            "`psi_*_within` takes a level and a tolerance in points, e.g. \"10%±3\" (level above 0 and below 100 %)",
        )
    })
}

pub(crate) fn parse_psi_within(text: &str) -> Option<(f64, f64)> {
    let (level, tol) = text.split_once('±').or_else(|| text.split_once("+-"))?;
    let level = level.trim();
    let level: f64 = level
        .strip_suffix('%')
        .unwrap_or(level)
        .trim()
        .parse()
        .ok()?;
    let tol = tol.trim();
    let tol: f64 = tol.strip_suffix('%').unwrap_or(tol).trim().parse().ok()?;
    (level > 0.0 && level < 100.0 && tol >= 0.0 && tol.is_finite()).then_some((level, tol))
}

/// A victim role the scope has: an app to kill, or a worker.
fn check_victim(
    cx: &Ctx<'_>,
    r: &RawExpect,
    injects: &[&Inject],
    apps: &[String],
) -> Result<Option<VictimRole>, SpecError> {
    let Some(v) = &r.victim else {
        return Ok(None);
    };
    let victim = match v.get_ref().as_str() {
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
    };
    if victim == VictimRole::App && apps.is_empty() {
        return Err(cx.err(
            v.span(),
            "`victim = \"app\"` but the experiment starts no app: add an [[apps]] entry",
        ));
    }
    if victim == VictimRole::Worker && injects.is_empty() {
        return Err(cx.err(
            v.span(),
            "`victim = \"worker\"` but no stage in its scope injects anything, so there is no worker to kill",
        ));
    }
    Ok(Some(victim))
}

/// `(min_oom_kills, max_oom_kills)`, agreeing with each other and with the victim.
fn check_kill_counts(
    cx: &Ctx<'_>,
    r: &RawExpect,
    victim: Option<&VictimRole>,
) -> Result<(Option<u64>, Option<u64>), SpecError> {
    let max = r.max_oom_kills.as_ref().map(|m| *m.get_ref());
    let min = r.min_oom_kills.as_ref().map(|m| *m.get_ref());
    if let (Some(VictimRole::None), Some(m)) = (victim, &r.min_oom_kills) {
        if *m.get_ref() > 0 {
            return Err(cx.err(
                m.span(),
                "`min_oom_kills` above 0 contradicts `victim = \"none\"`",
            ));
        }
    }
    if let (Some(VictimRole::Worker | VictimRole::App | VictimRole::Named(_)), Some(m)) =
        (victim, &r.max_oom_kills)
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
    Ok((min, max))
}

/// The tolerance as a fraction (0.02 for "2%"), given a sized injection that can be charged in
/// full under the limit.
fn check_charged_within(
    cx: &Ctx<'_>,
    c: &Spanned<String>,
    injects: &[&Inject],
    limit: Option<u64>,
) -> Result<f64, SpecError> {
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
    if injects
        .iter()
        .all(|i| matches!(i.amount, Amount::WorkingSet(_)))
    {
        return Err(cx.err(
            c.span(),
            "`charged_within` compares charged bytes with an injected `size`, but no stage in its scope injects a `size`",
        ));
    }
    let sized: Vec<u64> = injects
        .iter()
        .filter_map(|i| match i.amount {
            Amount::Size(SizeSpec::Bytes(b)) => Some(b),
            Amount::Size(SizeSpec::Percent(p)) => limit.map(|l| (l as f64 * p / 100.0) as u64),
            Amount::WorkingSet(_) | Amount::Pressure(_) => None,
        })
        .collect();
    if let Some(l) = limit {
        if let Some(&b) = sized.iter().find(|&&b| b >= l) {
            return Err(cx.err(
                c.span(),
                format!(
                    "`charged_within` cannot hold: a stage injects {} into a {} limit, so the cgroup OOMs before the size is charged; expect kills instead, or inject less",
                    human(b),
                    human(l)
                ),
            ));
        }
    }
    Ok(pct / 100.0)
}

fn check_app_survives(
    cx: &Ctx<'_>,
    r: &RawExpect,
    has_apps: bool,
    victim: Option<&VictimRole>,
) -> Result<Option<bool>, SpecError> {
    let Some(a) = &r.app_survives else {
        return Ok(None);
    };
    if !has_apps {
        return Err(cx.err(
            a.span(),
            "`app_survives` but the experiment starts no app: add an [[apps]] entry",
        ));
    }
    if *a.get_ref() && matches!(victim, Some(VictimRole::App | VictimRole::Named(_))) {
        return Err(cx.err(
            a.span(),
            "`app_survives = true` contradicts `victim = \"app\"`",
        ));
    }
    Ok(Some(*a.get_ref()))
}

#[cfg(test)]
mod tests {
    use super::parse_psi_within;

    #[test]
    fn psi_within_forms() {
        assert_eq!(parse_psi_within("10%±3"), Some((10.0, 3.0)));
        assert_eq!(parse_psi_within(" 5 % +- 1.5 "), Some((5.0, 1.5)));
        assert_eq!(parse_psi_within("10%"), None);
        assert_eq!(parse_psi_within("0%±3"), None);
        assert_eq!(parse_psi_within("100%±3"), None);
        assert_eq!(parse_psi_within("10%±-1"), None);
    }
}
