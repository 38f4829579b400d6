'use strict'
// A pg-boss worker process for the benchmark: works QUEUE until stopped (SIGTERM).
//
//   node work.js DATABASE_URL QUEUE noop
//   node work.js DATABASE_URL QUEUE http RECEIVER_URL BODY_FILE
//
// noop: every job does nothing, which leaves pg-boss's own cost (fetch and complete).
// http: every job POSTs a JSON body to RECEIVER_URL over keep-alive connections, and its
// batch completes only once every POST of it was answered 2xx (a non-2xx answer fails the
// batch, for pg-boss to retry). BODY_FILE holds a body that notifier sent (the suite takes
// it from the receiver), in which every "{{id}}" is replaced by the job's id: the same size
// and shape as notifier's webhook, with the id where notifier puts the notification's.
// Headers as notifier's webhook channel sends them: content type, webhook-id and
// webhook-timestamp, and the user agent given in PGBOSS_USER_AGENT.
//
// Settings as a user after throughput would pick them, each overridable from the
// environment: batches of PGBOSS_BATCH_SIZE (1000) jobs, polling every
// PGBOSS_POLLING_SECONDS (0.5, pg-boss's minimum), PGBOSS_WORKERS (1) `work` loops in the
// process, and at most PGBOSS_MAX_SOCKETS (32, notifier's cap per process) requests in
// flight. pg-boss 10 has no team settings: a batch is one fetch, and the handler decides
// how its jobs run (here all at once, up to the socket cap).

const fs = require('node:fs')
const http = require('node:http')
const PgBoss = require('pg-boss')

function setting (name, fallback) {
  const value = process.env[name]
  return value === undefined || value === '' ? fallback : Number(value)
}

function poster (receiver, template) {
  const target = new URL(receiver)
  const agent = new http.Agent({ keepAlive: true, maxSockets: setting('PGBOSS_MAX_SOCKETS', 32) })
  const userAgent = process.env.PGBOSS_USER_AGENT || 'pg-boss-bench'
  return (job) => new Promise((resolve, reject) => {
    const body = Buffer.from(template.replaceAll('{{id}}', job.id))
    const request = http.request({
      agent,
      host: target.hostname,
      port: target.port,
      path: target.pathname,
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'content-length': body.length,
        'user-agent': userAgent,
        'webhook-id': 'msg_' + job.id.replaceAll('-', ''),
        'webhook-timestamp': String(Math.floor(Date.now() / 1000))
      }
    }, (response) => {
      response.resume() // read and drop the answer, as notifier does
      response.on('end', () => {
        if (response.statusCode >= 200 && response.statusCode < 300) {
          resolve()
        } else {
          reject(new Error(`receiver answered ${response.statusCode}`))
        }
      })
    })
    request.on('error', reject)
    request.end(body)
  })
}

async function main () {
  const [url, queue, mode, receiver, bodyFile] = process.argv.slice(2)
  if (!url || !queue || !['noop', 'http'].includes(mode) || (mode === 'http' && !bodyFile)) {
    throw new Error('usage: node work.js DATABASE_URL QUEUE noop|http [RECEIVER_URL BODY_FILE]')
  }
  let handler = async () => {}
  if (mode === 'http') {
    const post = poster(receiver, fs.readFileSync(bodyFile, 'utf8'))
    handler = (jobs) => Promise.all(jobs.map(post))
  }
  const boss = new PgBoss({ connectionString: url })
  boss.on('error', (error) => console.error('pg-boss:', error))
  await boss.start()
  const options = {
    batchSize: setting('PGBOSS_BATCH_SIZE', 1000),
    pollingIntervalSeconds: setting('PGBOSS_POLLING_SECONDS', 0.5)
  }
  for (let n = 0; n < setting('PGBOSS_WORKERS', 1); n++) {
    await boss.work(queue, options, handler)
  }
  process.on('SIGTERM', () => {
    boss.stop({ graceful: false, wait: false }).finally(() => process.exit(0))
  })
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
