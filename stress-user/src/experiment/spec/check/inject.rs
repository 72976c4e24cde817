//! A stage's `inject`: how much (a size or a working-set level), by how many workers, at what
//! pace, of which memory kind, with which adj, and what to do when a worker is OOM-killed.

use toml::Spanned;

use crate::{
    experiment::spec::{
        context::{Ctx, SpecError},
        model::{Adj, Amount, Inject},
        raw::{RawAdj, RawInject},
    },
    inject::{alloc::Kind, control::Pace, plan::OnOom},
    size::SizeSpec,
};

/// The words `kind` and `on_oom` take, in the order an error lists them.
const KINDS: [(&str, Kind); 3] = [
    ("anon", Kind::Anon),
    ("file", Kind::File),
    ("shmem", Kind::Shmem),
];
const ON_OOM: [(&str, OnOom); 3] = [
    ("stop", OnOom::Stop),
    ("respawn", OnOom::Respawn),
    ("continue", OnOom::Continue),
];

pub(super) fn check_inject(cx: &Ctx<'_>, inj: &Spanned<RawInject>) -> Result<Inject, SpecError> {
    let r = inj.get_ref();
    Ok(Inject {
        amount: check_amount(cx, inj)?,
        workers: check_workers(cx, r)?,
        pace: check_pace(cx, r)?,
        kind: keyword(cx, "kind", r.kind.as_ref(), Kind::Anon, &KINDS)?,
        on_oom: keyword(cx, "on_oom", r.on_oom.as_ref(), OnOom::Stop, &ON_OOM)?,
        oom_score_adj: check_adj(cx, r)?,
    })
}

fn check_amount(cx: &Ctx<'_>, inj: &Spanned<RawInject>) -> Result<Amount, SpecError> {
    let r = inj.get_ref();
    if let Some(p) = &r.pressure {
        if r.size.is_some() || r.working_set.is_some() {
            return Err(cx.err(
                p.span(),
                "`inject` has `pressure` and a size: a PSI level and a byte goal exclude each other; keep one",
            ));
        }
        return crate::inject::pressure::parse_level(p.get_ref())
            .map(Amount::Pressure)
            .map_err(|e| cx.err(p.span(), e.to_string()));
    }
    match (&r.size, &r.working_set) {
        (Some(s), None) => Ok(Amount::Size(cx.size("size", s)?)),
        (None, Some(w)) => Ok(Amount::WorkingSet(cx.size("working_set", w)?)),
        (Some(_), Some(w)) => Err(cx.err(
            w.span(),
            "`inject` has both `size` and `working_set`: a fixed size and a working-set goal exclude each other; keep one",
        )),
        (None, None) => Err(cx.err(
            inj.span(),
            "`inject` needs `size` (total across workers) or `working_set` (a level to hold)",
        )),
    }
}

fn check_workers(cx: &Ctx<'_>, r: &RawInject) -> Result<usize, SpecError> {
    match &r.workers {
        Some(w) if *w.get_ref() == 0 || *w.get_ref() > 1024 => {
            Err(cx.err(w.span(), "`workers` must be between 1 and 1024"))
        }
        Some(w) => Ok(*w.get_ref() as usize),
        None => Ok(1),
    }
}

fn check_pace(cx: &Ctx<'_>, r: &RawInject) -> Result<Pace, SpecError> {
    match (&r.ramp, &r.rate) {
        (Some(_), Some(rate)) => Err(cx.err(
            rate.span(),
            "`inject` has both `ramp` and `rate`; they are two ways to pace the same growth, keep one",
        )),
        (Some(d), None) => {
            let d = cx.duration("ramp", d)?;
            Ok(if d.is_zero() {
                Pace::Fast
            } else {
                Pace::Ramp(d)
            })
        }
        (None, Some(rate)) => {
            let t = rate.get_ref().trim();
            let t = t.strip_suffix("/s").unwrap_or(t);
            match SizeSpec::parse(t) {
                Ok(SizeSpec::Bytes(b)) => Ok(Pace::Rate(cx.scaled(b))),
                _ => Err(cx.err(
                    rate.span(),
                    format!(
                        "`rate` {:?} is not a size per second, e.g. \"100MiB/s\"",
                        rate.get_ref()
                    ),
                )),
            }
        }
        (None, None) => Ok(Pace::Fast),
    }
}

/// One of `choices` by its word, or `default` when the key is absent.
fn keyword<T: Copy>(
    cx: &Ctx<'_>,
    key: &str,
    value: Option<&Spanned<String>>,
    default: T,
    choices: &[(&str, T)],
) -> Result<T, SpecError> {
    let Some(v) = value else {
        return Ok(default);
    };
    if let Some(&(_, t)) = choices.iter().find(|c| c.0 == v.get_ref().as_str()) {
        return Ok(t);
    }
    let words: Vec<String> = choices.iter().map(|c| format!("{:?}", c.0)).collect();
    let expected = match words.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => words.concat(),
    };
    Err(cx.err(
        v.span(),
        format!("`{key}` = {:?}: expected {expected}", v.get_ref()),
    ))
}

fn check_adj(cx: &Ctx<'_>, r: &RawInject) -> Result<Option<Adj>, SpecError> {
    let Some(a) = &r.oom_score_adj else {
        return Ok(None);
    };
    match a.get_ref() {
        RawAdj::Value(v) => Ok(Some(Adj::Value(
            cx.adj("oom_score_adj", &Spanned::new(a.span(), *v))?,
        ))),
        RawAdj::Word(w) if w == "lowest" => Ok(Some(Adj::Lowest)),
        RawAdj::Word(w) => Err(cx.err(
            a.span(),
            format!("`oom_score_adj` = {w:?}: expected a number from -1000 to 1000, or \"lowest\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::experiment::spec::parse;

    #[test]
    fn a_wrong_keyword_lists_the_right_ones() {
        let text = |inject: &str| {
            format!("[target]\nscratch = true\n[[stages]]\ninject = {{ size = \"1MiB\", {inject} }}\nhold = \"1s\"\n")
        };
        let message = |inject: &str| match parse("t.toml", &text(inject), false) {
            Ok(x) => panic!("expected an error, parsed {x:?}"),
            Err(e) => e.message,
        };
        assert_eq!(
            message("kind = \"heap\""),
            "`kind` = \"heap\": expected \"anon\", \"file\" or \"shmem\""
        );
        assert_eq!(
            message("on_oom = \"retry\""),
            "`on_oom` = \"retry\": expected \"stop\", \"respawn\" or \"continue\""
        );
    }
}
