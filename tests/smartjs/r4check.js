// What the SMART JS client (fhirclient on npm, under Node) makes of a FHIR base: printed as one JSON line.
// Usage: node r4check.js <base URL> <study id> <patient id>   (run by tests/test_smart_js.py)
"use strict";
const smart = require("fhirclient");

async function main() {
  const [base, studyId, patient] = process.argv.slice(2);
  // The open-server client (fhirclient >= 2.6): no launch, no request or response objects.
  const open = new smart.FhirClient(base);
  const study = await open.fhirRequest(`ImagingStudy/${studyId}`);
  await open.resolveReferences(study, ["endpoint"]);
  const found = [];
  for await (const resource of open.resources(`ImagingStudy?patient=${patient}`)) found.push(resource.id);
  // The Client a launched app gets, built without a launch.
  const client = smart({ url: "/", headers: { host: "localhost" }, protocol: "http" }, {}).client({ serverUrl: base });
  const resolved = await client.request(`ImagingStudy/${studyId}`, { resolveReferences: ["endpoint"] });
  console.log(JSON.stringify({
    release: await open.getFhirRelease(),
    clientRelease: await client.getFhirRelease(),
    endpoint: study.endpoint.map((e) => [e.resourceType, e.connectionType && e.connectionType.code]),
    clientEndpoint: resolved.endpoint.map((e) => e.resourceType),
    found,
  }));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
