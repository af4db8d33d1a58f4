// Validate one glTF/GLB file with the Khronos glTF-Validator and print its JSON report on stdout.
// Usage: node validate_gltf.mjs <file.glb>
// Exit status: 0 when a report was produced (read numErrors from it), 2 when the file could not be validated.
import { readFile } from "node:fs/promises";
import path from "node:path";
import validator from "gltf-validator";

const file = process.argv[2];
if (!file) {
  console.error("usage: node validate_gltf.mjs <file.glb|file.gltf>");
  process.exit(2);
}

try {
  const bytes = new Uint8Array(await readFile(file));
  const report = await validator.validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 0, // report every issue, not the first 100
    writeTimestamp: false,
    // External files (a .gltf with separate .bin/.png) resolve next to the asset.
    externalResourceFunction: (uri) =>
      readFile(path.resolve(path.dirname(file), decodeURIComponent(uri))).then((d) => new Uint8Array(d)),
  });
  process.stdout.write(JSON.stringify(report));
} catch (err) {
  console.error(`glTF-Validator could not read ${file}: ${err}`);
  process.exit(2);
}
