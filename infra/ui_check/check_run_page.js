// Checks, in headless Chromium, what the Prefect UI shows of one training_pipeline flow run:
// per-epoch log lines, the training-progress artifact, and the PNG charts decoded as images.
// Usage: node check_run_page.js http://127.0.0.1:4200 <flow-run-id> <screenshot dir>
// Needs playwright-core (npm) and a Chromium (CHROMIUM, default /usr/bin/chromium).
const fs = require('fs');
const { chromium } = require('playwright-core');

const [base, runId, out] = process.argv.slice(2);
const failures = [];

async function artifactsOf(runId) {
  const res = await fetch(`${base}/api/artifacts/filter`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ artifacts: { flow_run_id: { any_: [runId] } } }),
  });
  return res.json();
}

(async () => {
  fs.mkdirSync(out, { recursive: true });
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
  const page = await browser.newPage({ viewport: { width: 1500, height: 4000 } });

  await page.goto(`${base}/runs/flow-run/${runId}`, { waitUntil: 'networkidle', timeout: 60000 });
  const epochLines = page.getByText(/^epoch \d+\/\d+: loss /);
  await epochLines.first().waitFor({ timeout: 30000 }).catch(() => failures.push('no "epoch i/N: loss" log line on the run page'));
  const lines = await epochLines.allInnerTexts();
  console.log(`run page: ${lines.length} epoch log lines`, lines);
  await page.screenshot({ path: `${out}/run-page.png` });

  const artifacts = await artifactsOf(runId);
  const keys = artifacts.map((a) => a.key);
  console.log('artifacts:', keys.join(', '));
  for (const key of ['training-progress', 'training-chart', 'evaluation-chart']) {
    const artifact = artifacts.find((a) => a.key === key);
    if (!artifact) { failures.push(`no ${key} artifact`); continue; }
    await page.goto(`${base}/artifacts/artifact/${artifact.id}`, { waitUntil: 'networkidle', timeout: 60000 });
    await page.waitForTimeout(1500);
    await page.screenshot({ path: `${out}/${key}.png` });
    if (artifact.type === 'progress') {
      const shown = await page.getByText(/Progress: \d+%/).first().innerText().catch(() => '');
      console.log(`${key}: ${shown}`);
      if (!shown) failures.push(`${key}: no progress shown`);
    } else {
      const images = await page.$$eval('img[src^="data:image/png"]', (els) => els.map((e) => [e.naturalWidth, e.naturalHeight]));
      console.log(`${key}: PNG images decoded as`, images);
      if (!images.length || images.some(([w, h]) => !w || !h)) failures.push(`${key}: the PNG is not shown`);
    }
  }
  await browser.close();
  if (failures.length) { console.error('FAILED: ' + failures.join('; ')); process.exit(1); }
  console.log(`OK; screenshots in ${out}`);
})().catch((e) => { console.error(String(e).slice(0, 800)); process.exit(1); });
