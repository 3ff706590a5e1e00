// A viewer as an app would be written against the bridge: given a FHIR base URL, an ImagingStudy id and a bearer
// token (the page's query string), it reads the ImagingStudy, follows `endpoint` to the Endpoint, builds WADO-RS
// URLs from the Endpoint's `address` alone, and renders the first frame of the first instance with Cornerstone3D.
// tests/test_viewer.py opens it in headless Chromium and awaits `window.viewerResult`.
//
// Rendering is on the CPU: headless Chromium may have no WebGL, and a CPU-drawn canvas can be read back exactly.
// The image loader's no-web-workers build decodes on the main thread, so nothing but this one bundle is served.

import * as cornerstone from "@cornerstonejs/core";
import * as loaderModule from "@cornerstonejs/dicom-image-loader/dist/cornerstoneDICOMImageLoaderNoWebWorkers.bundle.min.js";
import dicomParser from "dicom-parser";

const loader = loaderModule.default?.external ? loaderModule.default : loaderModule;

/** A refusal or failure with the HTTP status that caused it, for the test to assert on. */
class Refused extends Error {
  constructor(what, status) {
    super(`${what}: HTTP ${status}`);
    this.status = status;
  }
}

async function readJson(url, token, accept) {
  const response = await fetch(url, { headers: { Authorization: `Bearer ${token}`, Accept: accept } });
  if (!response.ok) throw new Refused(`GET ${url}`, response.status);
  return response.json();
}

/** The WADO-RS base of the study's Endpoint, read from the Endpoint resource itself. */
async function endpointAddress(fhir, study, token) {
  const reference = study.endpoint?.[0]?.reference;
  if (!reference) throw new Error(`ImagingStudy/${study.id} has no endpoint`);
  const endpoint = await readJson(new URL(reference, `${fhir}/`).href, token, "application/fhir+json");
  if (!endpoint.address) throw new Error(`${reference} has no address`);
  return endpoint.address.replace(/\/+$/, "");
}

/** The first instance of the first series, as the ImagingStudy lists them. */
function firstInstance(study) {
  const series = study.series?.[0];
  const instance = series?.instance?.[0];
  if (!instance) throw new Error(`ImagingStudy/${study.id} lists no instance`);
  const studyUid = study.identifier?.find((id) => id.system === "urn:dicom:uid")?.value?.replace(/^urn:oid:/, "");
  if (!studyUid) throw new Error(`ImagingStudy/${study.id} has no Study Instance UID identifier`);
  return { study: studyUid, series: series.uid, instance: instance.uid };
}

let configuredToken = null;

async function setUp() {
  cornerstone.setUseCPURendering(true);
  await cornerstone.init();
  loader.external.cornerstone = cornerstone;
  loader.external.dicomParser = dicomParser;
  // The loader's own requests (frames) carry the token; the returned headers are merged into its defaults.
  loader.configure({ beforeSend: () => ({ Authorization: `Bearer ${configuredToken}` }) });
}

/** Renders frame 1 of one instance from a WADO-RS base; resolves once Cornerstone has drawn it. */
async function renderFrame(address, uids, token) {
  configuredToken = token;
  const instanceUrl = `${address}/studies/${uids.study}/series/${uids.series}/instances/${uids.instance}`;
  const metadata = await readJson(`${instanceUrl}/metadata`, token, "application/dicom+json");
  const imageId = `wadors:${instanceUrl}/frames/1`;
  loader.wadors.metaDataManager.add(imageId, metadata[0]);

  const element = document.getElementById("viewport");
  const engine = new cornerstone.RenderingEngine("viewer");
  engine.enableElement({ viewportId: "stack", type: cornerstone.Enums.ViewportType.STACK, element });
  const viewport = engine.getViewport("stack");
  const rendered = new Promise((resolve) =>
    element.addEventListener(cornerstone.Enums.Events.IMAGE_RENDERED, resolve, { once: true }),
  );
  await viewport.setStack([imageId]);
  viewport.render();
  await rendered;
  return { imageId, canvas: element.querySelector("canvas") };
}

/** Pixel statistics of a canvas: how many distinct grey values, and their variance. */
function canvasStatistics(canvas) {
  const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  let sum = 0;
  let sumOfSquares = 0;
  const values = new Set();
  for (let i = 0; i < data.length; i += 4) {
    const grey = data[i];
    sum += grey;
    sumOfSquares += grey * grey;
    values.add(grey);
  }
  const count = data.length / 4;
  const mean = sum / count;
  return { width: canvas.width, height: canvas.height, distinct: values.size, variance: sumOfSquares / count - mean * mean };
}

/** The whole path a viewer takes: ImagingStudy -> Endpoint -> WADO-RS -> canvas. */
async function viewStudy({ fhir, study: id, token }) {
  const study = await readJson(`${fhir}/ImagingStudy/${encodeURIComponent(id)}`, token, "application/fhir+json");
  const address = await endpointAddress(fhir, study, token);
  const uids = firstInstance(study);
  const { imageId, canvas } = await renderFrame(address, uids, token);
  return { rendered: true, address, imageId, uids, pixels: canvasStatistics(canvas) };
}

/** A viewer that already knows the UIDs (from elsewhere) asking the WADO-RS base directly. */
async function viewFrame({ address, uids, token }) {
  const { imageId, canvas } = await renderFrame(address, uids, token);
  return { rendered: true, address, imageId, uids, pixels: canvasStatistics(canvas) };
}

async function run() {
  const params = Object.fromEntries(new URLSearchParams(window.location.search));
  await setUp();
  try {
    if (params.address) {
      return await viewFrame({
        address: params.address,
        uids: { study: params.studyUid, series: params.seriesUid, instance: params.instanceUid },
        token: params.token,
      });
    }
    return await viewStudy(params);
  } catch (error) {
    // Cornerstone's loader rejects with the XMLHttpRequest's details, not an Error.
    const status = error.status ?? error.request?.status ?? error.xhr?.status ?? null;
    return { rendered: false, status, error: String(error.message ?? JSON.stringify(error)) };
  }
}

window.viewerResult = run();
