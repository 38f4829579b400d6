// Validate Gateway API objects against the schemas of @kubernetes-models/gateway-api
// (generated from the Gateway API CRDs). Reads a JSON array of objects on stdin; writes a
// JSON array of {kind, name, error} (error null when valid) on stdout.
import { readFileSync } from "node:fs";

const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const object of objects) {
  const [group, version] = object.apiVersion.split("/");
  const module = `@kubernetes-models/gateway-api/${group}/${version}/${object.kind}`;
  let error = null;
  try {
    const { [object.kind]: Model } = await import(module);
    new Model(object).validate();
  } catch (exc) {
    error = String(exc.message ?? exc);
  }
  results.push({ kind: object.kind, name: object.metadata?.name ?? null, error });
}
process.stdout.write(JSON.stringify(results));
