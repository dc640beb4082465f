// Compiles proto/chatplane/v1/frames.proto into src/frames_pb.js: static
// encoders and decoders on protobufjs/minimal. Static code matters: the
// reflection runtime compiles its codecs with Function(), which the app's
// Content-Security-Policy (no 'unsafe-eval') forbids.
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
execFileSync(join(root, "node_modules/.bin/pbjs"), [
  "-t", "static-module", "-w", "es6", "--keep-case", "--no-comments", "--no-verify",
  "--no-delimited", "--no-service", "--no-typeurl",
  "-o", join(root, "src/frames_pb.js"), join(root, "../../proto/chatplane/v1/frames.proto"),
], { stdio: "inherit" });
