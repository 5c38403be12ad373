#!/usr/bin/env node
// Prints the PromQL of every target of a Grafana dashboard as a Prometheus rules file (JSON, which
// is YAML), so that `promtool check rules` parses and type-checks each expression with
// Prometheus's own parser: ./scripts/test runs it on deploy/grafana/mystira-users.json.
//
// Grafana substitutes its interval variables before sending a query; they are replaced here by a
// fixed duration of the same kind, which changes no expression's structure. Any other `$`
// variable is left in place, so promtool rejects it: the dashboard has no others, and one added
// later needs a substitution here too.
//
// Usage: node scripts/dashboard-rules.js DASHBOARD.json > rules.yml
"use strict";

const fs = require("fs");

const dashboard = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const intervals = { $__rate_interval: "5m", $__interval: "1m", $__range: "6h" };

function* targets(panels) {
  for (const panel of panels || []) {
    yield* targets(panel.panels); // a row's panels
    for (const target of panel.targets || []) yield { panel, target };
  }
}

const rules = [];
for (const { panel, target } of targets(dashboard.panels)) {
  let expr = target.expr;
  for (const [variable, value] of Object.entries(intervals)) expr = expr.split(variable).join(value);
  // the rule's name says which panel a promtool error is about
  rules.push({ record: `dashboard:panel_${panel.id}:${target.refId}`, expr });
}
if (rules.length === 0) throw new Error("the dashboard has no targets");
process.stdout.write(JSON.stringify({ groups: [{ name: "dashboard", rules }] }, null, 2) + "\n");
