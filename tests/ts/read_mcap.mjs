// Read a streamfuse recording with Foxglove's own MCAP libraries, both ways: the indexed
// reader (summary, index, CRCs) and the streaming reader (every record, CRCs). Decode every
// channel that names a schema Foxglove knows: protobuf from the embedded FileDescriptorSet,
// JSON against nothing but JSON.parse. Print one JSON report on stdout.
//
//   node read_mcap.mjs FILE.mcap
import { open } from "node:fs/promises";
import { McapIndexedReader, McapStreamReader } from "@mcap/core";
import { loadDecompressHandlers, protobufFromBinaryDescriptor } from "@mcap/support";

const path = process.argv[2];
const decompressHandlers = await loadDecompressHandlers();
const handle = await open(path, "r");
const readable = {
  size: async () => BigInt((await handle.stat()).size),
  read: async (offset, length) => {
    const buf = new Uint8Array(Number(length));
    await handle.read(buf, 0, Number(length), Number(offset));
    return buf;
  },
};
const reader = await McapIndexedReader.Initialize({ readable, decompressHandlers });
const decoders = new Map();
for (const [id, channel] of reader.channelsById) {
  const schema = reader.schemasById.get(channel.schemaId);
  if (channel.messageEncoding === "protobuf" && schema?.encoding === "protobuf") {
    const type = protobufFromBinaryDescriptor(schema.data).lookupType(schema.name);
    decoders.set(id, (data) => type.toObject(type.decode(data), { longs: Number }));
  } else if (channel.messageEncoding === "json") {
    decoders.set(id, (data) => JSON.parse(new TextDecoder().decode(data)));
  }
}
const topics = {};
for await (const message of reader.readMessages()) {
  const channel = reader.channelsById.get(message.channelId);
  const t = (topics[channel.topic] ??= {
    encoding: channel.messageEncoding,
    schema: reader.schemasById.get(channel.schemaId)?.name ?? null,
    count: 0,
    decoded: 0,
    first: null,
  });
  t.count += 1;
  const decode = decoders.get(message.channelId);
  if (decode) {
    const value = decode(message.data);
    t.decoded += 1;
    if (t.first === null) {
      t.first = value;
      if (value.data !== undefined) t.first = { ...value, data: value.data.length };
    }
  }
}
// The streaming reader, over the same bytes: every record parses, every CRC holds.
const stream = new McapStreamReader({ decompressHandlers, validateCrcs: true });
stream.append(new Uint8Array(await handle.readFile()));
let records = 0;
let streamed = 0;
for (let r; (r = stream.nextRecord()); ) {
  records += 1;
  if (r.type === "Message") streamed += 1;
}
await handle.close();
console.log(JSON.stringify({ topics, records, streamed_messages: streamed, done: stream.done() }));
