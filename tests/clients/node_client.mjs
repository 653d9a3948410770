// A non-Python client of the public API and of the Kafka topics.
// Usage:
//   node node_client.mjs grpc <host:port> <proto_root> <user_id>
//     -> health check, then Generate; prints one JSON line
//   node node_client.mjs kafka <bootstrap> <topic> <key>
//     -> prints the JSON values of the topic's records with that key
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { Kafka, logLevel } from "kafkajs";

async function grpcMain(target, protoRoot, userId) {
  const healthProto = {
    syntax: "proto3",
  };
  const opts = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
                 includeDirs: [protoRoot] };
  const def = protoLoader.loadSync("personalize/v1/assistant.proto", opts);
  const pkg = grpc.loadPackageDefinition(def);
  const client = new pkg.personalize.v1.Assistant(target, grpc.credentials.createInsecure());
  // grpc.health.v1 by hand-written descriptor (no extra files needed)
  const healthDef = protoLoader.fromJSON({
    nested: { grpc: { nested: { health: { nested: { v1: { nested: {
      HealthCheckRequest: { fields: { service: { type: "string", id: 1 } } },
      HealthCheckResponse: { fields: { status: { type: "ServingStatus", id: 1 } },
        nested: { ServingStatus: { values: { UNKNOWN: 0, SERVING: 1, NOT_SERVING: 2,
                                             SERVICE_UNKNOWN: 3 } } } },
      Health: { methods: { Check: { requestType: "HealthCheckRequest",
                                    responseType: "HealthCheckResponse" } } },
    } } } } } } },
  }, opts);
  const health = grpc.loadPackageDefinition(healthDef).grpc.health.v1;
  const hc = new health.Health(target, grpc.credentials.createInsecure());
  const status = await new Promise((resolve, reject) =>
    hc.Check({ service: "" }, (err, res) => (err ? reject(err) : resolve(res.status))));
  const pieces = [];
  let final = null;
  await new Promise((resolve, reject) => {
    const call = client.Generate({ user_id: userId, max_tokens: 6, temperature: 0,
      messages: [{ role: "user", content: "hello" }] });
    call.on("data", (m) => { pieces.push(m.text); if (m.finished) final = m; });
    call.on("error", reject);
    call.on("end", resolve);
  });
  console.log(JSON.stringify({ health: status, text: pieces.join(""),
    response_id: final.response_id, completion_tokens: final.completion_tokens }));
  client.close(); hc.close();
}

async function kafkaMain(bootstrap, topic, key) {
  const kafka = new Kafka({ clientId: "node-reader", brokers: [bootstrap], logLevel: logLevel.NOTHING });
  const admin = kafka.admin();
  await admin.connect();
  const offsets = await admin.fetchTopicOffsets(topic);
  await admin.disconnect();
  const want = new Map(offsets.map((o) => [o.partition, BigInt(o.high)]));
  const consumer = kafka.consumer({ groupId: `node-reader-${Date.now()}` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const out = [];
  const done = new Promise((resolve) => {
    const check = () => { if ([...want.values()].every((v) => v <= 0n)) resolve(); };
    check();
    consumer.run({ eachMessage: async ({ partition, message }) => {
      if (message.key && message.key.toString() === key) out.push(JSON.parse(message.value.toString()));
      want.set(partition, BigInt(want.get(partition)) - 1n);
      check();
    } });
  });
  await Promise.race([done, new Promise((r) => setTimeout(r, 20000))]);
  await consumer.disconnect();
  console.log(JSON.stringify(out));
}

const [mode, ...args] = process.argv.slice(2);
(mode === "grpc" ? grpcMain(...args) : kafkaMain(...args)).then(
  () => process.exit(0), (e) => { console.error(e); process.exit(1); });
