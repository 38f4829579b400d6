'use strict'
// Queues COUNT jobs for the pg-boss workers of the benchmark, then exits.
//
//   node produce.js DATABASE_URL QUEUE COUNT
//
// Creates pg-boss's schema and the queue if missing. Each job carries a small payload, as a
// notification carries its context; the jobs go in with `insert`, pg-boss's bulk path, a
// thousand per statement, so that queueing is quick and stays out of what is measured.

const PgBoss = require('pg-boss')

const CHUNK = 1000

async function main () {
  const [url, queue, count] = process.argv.slice(2)
  const total = Number.parseInt(count, 10)
  if (!url || !queue || !(total > 0)) {
    throw new Error('usage: node produce.js DATABASE_URL QUEUE COUNT')
  }
  // Nothing but the inserts: no maintenance or cron loops in this short-lived process.
  const boss = new PgBoss({ connectionString: url, supervise: false, schedule: false })
  boss.on('error', (error) => { throw error })
  await boss.start()
  await boss.createQueue(queue)
  for (let first = 0; first < total; first += CHUNK) {
    const jobs = []
    for (let n = first; n < Math.min(total, first + CHUNK); n++) {
      jobs.push({ name: queue, data: { n } })
    }
    await boss.insert(jobs)
  }
  await boss.stop({ graceful: false, wait: true })
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
