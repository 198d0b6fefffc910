// Reads Kubernetes objects as JSON, one per line, on standard input; validates each Istio
// object against its CRD's schema (the models are generated from Istio's own CRDs) and
// prints one line per object: `ok KIND NAMESPACE/NAME`, `invalid KIND NAMESPACE/NAME: why`,
// or `unknown KIND` for an Istio kind or version these models do not have. Other objects
// (core Kubernetes kinds) are left to kubernetes-validate. Exit status 1 if any object is
// invalid or unknown.
import { createInterface } from "node:readline";
import * as security from "@kubernetes-models/istio/security.istio.io/v1";
import * as networking from "@kubernetes-models/istio/networking.istio.io/v1";
import * as telemetry from "@kubernetes-models/istio/telemetry.istio.io/v1";
import * as install from "@kubernetes-models/istio/install.istio.io/v1alpha1";

const models = {
  "security.istio.io/v1": security,
  "networking.istio.io/v1": networking,
  "telemetry.istio.io/v1": telemetry,
  "install.istio.io/v1alpha1": install,
};

let failed = false;
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const object = JSON.parse(line);
  if (!/\.istio\.io\//.test(object.apiVersion ?? "")) continue;
  const name = `${object.metadata?.namespace ?? ""}/${object.metadata?.name ?? ""}`;
  const Model = models[object.apiVersion]?.[object.kind];
  if (!Model) {
    console.log(`unknown ${object.apiVersion} ${object.kind} ${name}`);
    failed = true;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`ok ${object.kind} ${name}`);
  } catch (e) {
    console.log(`invalid ${object.kind} ${name}: ${(e.message ?? String(e)).replace(/\s+/g, " ")}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
