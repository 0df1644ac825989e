// Counts the results of one run of the HTTP cache test suite
// (http-tests/cache-tests) the way cache-tests.fyi shows them.
//
//   node summary.mjs SUITE_DIR RESULTS.json [NAME]
//
// Prints one line "NAME pass=N required_fail=N optional_fail=N other=N"
// and, on stderr, the ids of the failing tests grouped by kind.  The
// suite's own result logic (test-engine/lib/results.mjs) decides what each
// result is, so the counts are comparable with the published ones.

import fs from 'fs'
import path from 'path'
import { pathToFileURL } from 'url'

const [suiteDir, resultsFile, name = path.basename(resultsFile)] =
  process.argv.slice(2)

if (!suiteDir || !resultsFile) {
  console.error('usage: node summary.mjs SUITE_DIR RESULTS.json [NAME]')
  process.exit(2)
}

const load = (rel) => import(pathToFileURL(path.join(suiteDir, rel)).href)
const { default: suites } = await load('tests/index.mjs')
const { determineTestResult, resultTypes } =
  await load('test-engine/lib/results.mjs')

const results = JSON.parse(fs.readFileSync(resultsFile, 'utf8'))
const count = { pass: 0, fail: 0, optional_fail: 0, check: 0, other: 0 }
const failing = { fail: [], optional_fail: [], other: [] }

for (const suite of suites) {
  for (const test of suite.tests) {
    const r = determineTestResult(suites, test.id, results)
    if (r === resultTypes.pass) {
      count.pass++
    } else if (r === resultTypes.fail) {
      count.fail++
      failing.fail.push(test.id)
    } else if (r === resultTypes.optional_fail) {
      count.optional_fail++
      failing.optional_fail.push(test.id)
    } else if (r === resultTypes.yes || r === resultTypes.no) {
      count.check++
    } else {
      count.other++
      failing.other.push(`${test.id} (${r[2]})`)
    }
  }
}

console.log(`${name} pass=${count.pass} required_fail=${count.fail} ` +
  `optional_fail=${count.optional_fail} other=${count.other}`)
for (const [kind, ids] of Object.entries(failing)) {
  if (ids.length) console.error(`${name} ${kind}: ${ids.join(' ')}`)
}
