//! The shipped dashboard and alert rules name only what the gateway
//! exports: every expression of `deploy/grafana/webhook-ingestor.json` and
//! `deploy/prometheus/webhook-ingestor.rules.yml` parses (`promql-parser`),
//! and every metric it selects is on a live gateway's `/metrics`, read after
//! the traffic that makes every family appear. A metric renamed in the code
//! fails this test until the dashboard and the rules follow.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use promql_parser::parser::{self, Expr};
use webhook_ingestor::ingest::sources::Sources;

use crate::harness::{event, wait_until, Client, TestApp};
use crate::operate::SOURCES;

const DASHBOARD: &str = include_str!("../../deploy/grafana/webhook-ingestor.json");
const RULES: &str = include_str!("../../deploy/prometheus/webhook-ingestor.rules.yml");

/// Series Prometheus itself makes (the scrape's `up`), not the gateway.
const FROM_PROMETHEUS: [&str; 1] = ["up"];

/// The metric names `e` selects.
fn selected(e: &Expr, out: &mut BTreeSet<String>) {
    match e {
        Expr::Aggregate(a) => {
            selected(&a.expr, out);
            if let Some(p) = &a.param {
                selected(p, out);
            }
        }
        Expr::Unary(u) => selected(&u.expr, out),
        Expr::Binary(b) => {
            selected(&b.lhs, out);
            selected(&b.rhs, out);
        }
        Expr::Paren(p) => selected(&p.expr, out),
        Expr::Subquery(s) => selected(&s.expr, out),
        Expr::VectorSelector(v) => out.extend(v.name.clone()),
        Expr::MatrixSelector(m) => out.extend(m.vs.name.clone()),
        Expr::Call(c) => c.args.args.iter().for_each(|a| selected(a, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Every `expr` of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let d: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let panels = d["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "a dashboard of {} panels", panels.len());
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets").iter())
        .map(|t| t["expr"].as_str().expect("a target has an expr").to_string())
        .collect()
}

/// Every `expr:` of the rules file, inline or as a `|` block.
fn rule_exprs() -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = RULES.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((indent, rest)) = line.split_once("expr:") else { continue };
        let rest = rest.trim();
        if rest != "|" {
            out.push(rest.to_string());
            continue;
        }
        let mut block = String::new();
        while let Some(next) = lines.peek() {
            let deeper = next.len() - next.trim_start().len() > indent.len();
            if !deeper || next.trim().is_empty() {
                break;
            }
            block.push_str(next.trim());
            block.push('\n');
            lines.next();
        }
        out.push(block);
    }
    out
}

/// The names on `/metrics` (each family's, and a histogram's series).
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            names.insert(name.to_string());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{s}"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// The names `exprs` select that `names` lacks (a parse failure panics).
fn missing(exprs: &[String], names: &BTreeSet<String>) -> BTreeSet<String> {
    let mut wanted = BTreeSet::new();
    for e in exprs {
        let ast = parser::parse(e).unwrap_or_else(|err| panic!("{e:?} does not parse: {err}"));
        selected(&ast, &mut wanted);
    }
    wanted.retain(|n| !names.contains(n) && !FROM_PROMETHEUS.contains(&n.as_str()));
    wanted
}

fn scrape(app: &TestApp) -> String {
    let mut c = Client::connect(app.addr);
    c.send(b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n");
    String::from_utf8(c.read_response().expect("metrics").body).unwrap()
}

#[test]
fn the_dashboard_and_the_rules_name_only_metrics_the_gateway_exports() {
    let app = TestApp::spawn_full(|c| {
        c.ingest.sources = Some(Arc::new(Sources::parse(SOURCES, &|_| None).unwrap()));
    });
    // Traffic that makes every family appear: a 202 (a source's last
    // accepted time, a stored row, the store's gauges), a 401 and a 404.
    assert_eq!(app.post("open", &event("open", "evt_dash")).status, 202);
    assert_eq!(app.post("stripe", r#"{"id":"evt_1"}"#).status, 401);
    assert_eq!(app.post("nowhere", "{}").status, 404);
    wait_until(Duration::from_secs(30), "the row", || app.rows() == 1);
    let names = exported(&scrape(&app));
    for family in [
        "webhook_source_last_accepted_timestamp_seconds",
        "webhook_postgres_up",
        "webhook_store_retention_seconds",
    ] {
        assert!(names.contains(family), "{family} is not exported after the traffic");
    }

    let dashboard = dashboard_exprs();
    let rules = rule_exprs();
    assert!(rules.len() >= 10, "{} rules read", rules.len());
    assert_eq!(
        missing(&dashboard, &names),
        BTreeSet::new(),
        "the dashboard names metrics the gateway does not export"
    );
    assert_eq!(
        missing(&rules, &names),
        BTreeSet::new(),
        "the rules name metrics the gateway does not export"
    );

    // The check itself fails on a renamed metric.
    let renamed: Vec<String> =
        dashboard.iter().map(|e| e.replace("webhook_queue_lag", "webhook_queue_backlog")).collect();
    assert_eq!(missing(&renamed, &names), BTreeSet::from(["webhook_queue_backlog".to_string()]));
}
