// The queue a team would pick instead of agentfleet, for the benchmark suite's peer rows:
// BullMQ behind a minimal Node HTTP intake, doing the same job as agentfleet's no-op agent —
// authenticate the caller, queue the job in Redis, call the (stub) LLM, keep the result in
// Redis, and POST a Standard-Webhooks-signed `job.succeeded` event that the suite's verifying
// receiver accepts.
//
//   node peer.mjs intake   # prints "listening <port>" once it accepts
//   node peer.mjs worker   # prints "ready" once it consumes
//
// Configured by environment: PEER_REDIS_HOST/PORT, PEER_PREFIX (BullMQ's key prefix, one per
// run so the suite can delete its keys), PEER_QUEUE, PEER_PORT (intake; 0 = any),
// PEER_API_KEY_SHA256 (hex SHA-256 of the bearer token the intake accepts), PEER_LLM_URL (the
// OpenAI-compatible base URL), PEER_MODEL, PEER_WEBHOOK_SECRET (whsec_…), PEER_CONCURRENCY.
import { createHash, createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import { Queue, Worker } from 'bullmq';
import IORedis from 'ioredis';

const env = (name, fallback) => process.env[name] ?? fallback;
// A client per role, as BullMQ wants from ES modules (its own loading of ioredis is CommonJS).
const connection = new IORedis({
  host: env('PEER_REDIS_HOST', '127.0.0.1'),
  port: Number(env('PEER_REDIS_PORT', '6379')),
  maxRetriesPerRequest: null,
});
const prefix = env('PEER_PREFIX', 'bull');
const queueName = env('PEER_QUEUE', 'jobs');

function intake() {
  const queue = new Queue(queueName, { connection, prefix });
  const expected = Buffer.from(env('PEER_API_KEY_SHA256', ''), 'hex');
  const authorized = (header) => {
    const token = /^Bearer (.+)$/i.exec(header ?? '')?.[1];
    if (!token || expected.length !== 32) return false;
    return timingSafeEqual(createHash('sha256').update(token).digest(), expected);
  };
  const answer = (res, status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  const server = http.createServer(async (req, res) => {
    if (req.method !== 'POST' || req.url !== '/v1/jobs') return answer(res, 404, { error: 'not found' });
    if (!authorized(req.headers.authorization)) return answer(res, 401, { error: 'unauthorized' });
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    let job;
    try {
      job = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      return answer(res, 400, { error: 'body is not JSON' });
    }
    if (typeof job?.agent !== 'string' || typeof job?.input !== 'string' || typeof job?.webhook_url !== 'string') {
      return answer(res, 400, { error: 'agent, input and webhook_url are required strings' });
    }
    const id = randomUUID();
    try {
      await queue.add(
        'job',
        { agent: job.agent, input: job.input, webhook_url: job.webhook_url, created_at: new Date().toISOString() },
        // Results kept an hour, like agentfleet's records; retried like agentfleet's jobs.
        { jobId: id, attempts: 3, backoff: { type: 'exponential', delay: 1000 }, removeOnComplete: { age: 3600 }, removeOnFail: { age: 3600 } },
      );
    } catch (err) {
      return answer(res, 503, { error: String(err) });
    }
    answer(res, 202, { id, status: 'queued', agent: job.agent });
  });
  server.keepAliveTimeout = 65_000;
  server.listen(Number(env('PEER_PORT', '0')), '127.0.0.1', () => {
    console.log(`listening ${server.address().port}`);
  });
}

function worker() {
  const llm = env('PEER_LLM_URL', 'http://127.0.0.1:8000/v1');
  const model = env('PEER_MODEL', 'bench');
  const secret = Buffer.from(env('PEER_WEBHOOK_SECRET', '').replace(/^whsec_/, ''), 'base64');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

  const post = (url, body, headers) =>
    new Promise((resolve, reject) => {
      const req = http.request(url, { method: 'POST', agent, headers: { 'content-type': 'application/json', ...headers } }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8') }));
      });
      req.on('error', reject);
      req.setTimeout(30_000, () => req.destroy(new Error('timed out')));
      req.end(body);
    });

  const deliver = async (url, record) => {
    const body = JSON.stringify({ type: 'job.succeeded', timestamp: record.finished_at, data: record });
    const msgId = `msg_${record.id}`;
    const timestamp = Math.floor(Date.now() / 1000).toString();
    const signature = createHmac('sha256', secret).update(`${msgId}.${timestamp}.${body}`).digest('base64');
    const res = await post(url, body, { 'webhook-id': msgId, 'webhook-timestamp': timestamp, 'webhook-signature': `v1,${signature}` });
    if (res.status < 200 || res.status >= 300) throw new Error(`webhook answered ${res.status}`);
  };

  const run = async (job) => {
    const startedAt = new Date().toISOString();
    const request = JSON.stringify({ model, max_tokens: 512, messages: [{ role: 'user', content: job.data.input }] });
    const res = await post(`${llm}/chat/completions`, request, {});
    if (res.status !== 200) throw new Error(`provider answered ${res.status}`);
    const completion = JSON.parse(res.body);
    const output = completion?.choices?.[0]?.message?.content ?? '';
    await deliver(job.data.webhook_url, {
      id: job.id,
      tenant: 'acme',
      agent: job.data.agent,
      status: 'succeeded',
      attempts: job.attemptsMade + 1,
      created_at: job.data.created_at,
      started_at: startedAt,
      finished_at: new Date().toISOString(),
      output,
      usage: completion?.usage ?? null,
    });
    return output; // kept in Redis as the job's return value
  };

  const consumer = new Worker(queueName, run, { connection, prefix, concurrency: Number(env('PEER_CONCURRENCY', '64')) });
  consumer.on('failed', (job, err) => console.error(`job ${job?.id} failed: ${err?.message}`));
  consumer.waitUntilReady().then(() => console.log('ready'));
}

const stop = () => process.exit(0);
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

if (process.argv[2] === 'intake') intake();
else if (process.argv[2] === 'worker') worker();
else {
  console.error('usage: node peer.mjs intake|worker');
  process.exit(2);
}
