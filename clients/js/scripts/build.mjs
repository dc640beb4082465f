// Bundles the SDK (dist/chatplane.js, for node tests and apps) and the web
// app (into the Python package: dataplane/chatplane/web/static/), minified.
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
const staticDir = join(root, "../../dataplane/chatplane/web/static");

await build({
  entryPoints: [join(root, "src/index.ts")], bundle: true, format: "esm",
  platform: "neutral", outfile: join(root, "dist/chatplane.js"), target: "es2020",
  logLevel: "warning",
});
mkdirSync(staticDir, { recursive: true });
await build({
  entryPoints: [join(root, "web/app.ts")], bundle: true, format: "iife", minify: true,
  platform: "browser", outfile: join(staticDir, "app.js"), target: "es2020",
  logLevel: "warning", legalComments: "none",
});
for (const name of ["index.html", "app.css"]) {
  copyFileSync(join(root, "web", name), join(staticDir, name));
}
