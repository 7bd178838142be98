#!/usr/bin/env node
// Validates rendered Kubernetes manifests (multi-document YAML files) against the
// Kubernetes OpenAPI schemas of kubernetes-models and the prometheus-operator CRD
// schemas of @kubernetes-models/prometheus-operator: each document's model class is
// picked by apiVersion + kind and its .validate() run. A document whose
// apiVersion/kind has no model is an error too (nothing is skipped silently).
//
//   node validate.js FILE.yaml [FILE.yaml ...]
//
// Prints one line per document ("ok <file> <apiVersion> <Kind>/<name>" or
// "error <file> <apiVersion> <Kind>/<name>: <path> <message>" per schema error) and
// a summary line; exits 1 when any document is invalid. Setup: `npm ci` in this
// folder (scripts/install_deps.sh does it).
"use strict";

const fs = require("fs");
const YAML = require("yaml");

// apiVersion -> module holding its model classes.
function modulePath(apiVersion) {
  if (apiVersion.startsWith("monitoring.coreos.com/")) {
    return `@kubernetes-models/prometheus-operator/${apiVersion}`;
  }
  return `kubernetes-models/${apiVersion}`; // "v1", "apps/v1", "policy/v1", ...
}

function modelClass(apiVersion, kind) {
  let mod;
  try {
    mod = require(modulePath(apiVersion));
  } catch (e) {
    return { error: `no schema for apiVersion ${apiVersion}` };
  }
  if (typeof mod[kind] !== "function") {
    return { error: `no schema for kind ${kind} in ${apiVersion}` };
  }
  return { cls: mod[kind] };
}

function errorsOf(e) {
  const list = Array.isArray(e.errors) ? e.errors : Array.isArray(e.details) ? e.details : null;
  if (!list || list.length === 0) return [e.message];
  return list.map((x) => {
    const path = x.instancePath || x.dataPath || "/";
    const extra = x.params && x.params.additionalProperty ? ` (${x.params.additionalProperty})` : "";
    return `${path} ${x.message}${extra}`;
  });
}

function main(files) {
  if (files.length === 0) {
    console.error("usage: node validate.js FILE.yaml [FILE.yaml ...]");
    return 2;
  }
  let docs = 0;
  let bad = 0;
  for (const file of files) {
    const text = fs.readFileSync(file, "utf8");
    for (const d of YAML.parseAllDocuments(text)) {
      if (d.errors && d.errors.length) {
        bad++;
        console.log(`error ${file}: YAML: ${d.errors[0].message}`);
        continue;
      }
      const obj = d.toJS();
      if (obj === null || obj === undefined) continue;
      docs++;
      const apiVersion = typeof obj.apiVersion === "string" ? obj.apiVersion : "";
      const kind = typeof obj.kind === "string" ? obj.kind : "";
      const name = (obj.metadata && obj.metadata.name) || "?";
      const what = `${file} ${apiVersion || "?"} ${kind || "?"}/${name}`;
      if (!apiVersion || !kind) {
        bad++;
        console.log(`error ${what}: apiVersion and kind are required`);
        continue;
      }
      const { cls, error } = modelClass(apiVersion, kind);
      if (error) {
        bad++;
        console.log(`error ${what}: ${error}`);
        continue;
      }
      try {
        new cls(obj).validate();
        console.log(`ok ${what}`);
      } catch (e) {
        bad++;
        for (const msg of errorsOf(e)) console.log(`error ${what}: ${msg}`);
      }
    }
  }
  const kv = require("kubernetes-models/package.json").version;
  const pv = require("@kubernetes-models/prometheus-operator/package.json").version;
  console.log(`validate: ${docs - bad}/${docs} documents valid (kubernetes-models ${kv}, ` +
              `@kubernetes-models/prometheus-operator ${pv})`);
  return bad === 0 && docs > 0 ? 0 : 1;
}

process.exitCode = main(process.argv.slice(2));
