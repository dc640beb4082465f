// Turns proto/chatplane/v1/frames.proto into src/frames.json, the descriptor
// the SDK loads with protobufjs/light (no .proto parser in the bundle).
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import protobuf from "protobufjs";

const here = dirname(fileURLToPath(import.meta.url));
const source = join(here, "../../../proto/chatplane/v1/frames.proto");
const { root } = protobuf.parse(readFileSync(source, "utf8"), { keepCase: true });
writeFileSync(join(here, "../src/frames.json"), JSON.stringify(root.toJSON()) + "\n");
