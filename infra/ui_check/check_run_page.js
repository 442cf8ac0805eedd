// Starts a deployment's Quick run from the Prefect UI in headless Chromium, then checks what the UI
// shows: while it trains, epoch log lines and a progress artifact below 100%; when it is done,
// every epoch line, the progress at 100% and the PNG charts decoded as images. Screenshots in OUT.
// Usage: node check_run_page.js http://127.0.0.1:4200 training_pipeline/on-demand OUT
// Needs playwright-core (npm) and a Chromium (CHROMIUM, default /usr/bin/chromium).
const fs = require('fs');
const { chromium } = require('playwright-core');

const [base, deployment, out] = process.argv.slice(2);
const api = `${base}/api`;
const failures = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function call(path, body) {
  const res = await fetch(`${api}${path}`, body === undefined ? {} : {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return res.json();
}
const artifactsOf = (runId) => call('/artifacts/filter', { artifacts: { flow_run_id: { any_: [runId] } } });

async function quickRunFromUi(page, deploymentId) {
  await page.goto(`${base}/deployments/deployment/${deploymentId}`, { waitUntil: 'networkidle', timeout: 60000 });
  await page.getByRole('button', { name: 'Run', exact: true }).click();
  await page.getByText('Quick run', { exact: true }).click();
  for (let i = 0; i < 60; i++) {
    const runs = await call('/flow_runs/filter', { deployments: { id: { any_: [deploymentId] } }, sort: 'EXPECTED_START_TIME_DESC', limit: 1 });
    if (runs.length) return runs[0].id;
    await sleep(1000);
  }
  throw new Error('no flow run appeared after Quick run');
}

async function whileTraining(page, runId) {
  await page.goto(`${base}/runs/flow-run/${runId}`, { waitUntil: 'networkidle', timeout: 60000 });
  // The UI streams new log lines into the open page: no reload.
  await page.getByText(/^epoch 1\/\d+: loss /).first().waitFor({ timeout: 15 * 60000 });
  const state = (await call(`/flow_runs/${runId}`)).state.type;
  const progress = (await artifactsOf(runId)).find((a) => a.key === 'training-progress');
  const lines = await page.getByText(/^epoch \d+\/\d+: loss /).allInnerTexts();
  await page.screenshot({ path: `${out}/while-training.png` });
  console.log(`while training: run ${state}, ${lines.length} epoch line(s), progress ${progress && progress.data}%`, lines);
  if (state !== 'RUNNING') failures.push(`the first epoch line appeared only when the run was ${state}`);
  if (!progress || !(progress.data < 100)) failures.push('no training-progress below 100% while training');
}

async function whenDone(page, runId) {
  for (let state = ''; state !== 'COMPLETED'; await sleep(3000)) {
    state = (await call(`/flow_runs/${runId}`)).state.type;
    if (['FAILED', 'CRASHED', 'CANCELLED'].includes(state)) throw new Error(`run ended ${state}`);
  }
  await page.goto(`${base}/runs/flow-run/${runId}`, { waitUntil: 'networkidle', timeout: 60000 });
  await page.getByText(/^epoch \d+\/\d+: loss /).first().waitFor({ timeout: 30000 });
  console.log('after the run:', await page.getByText(/^epoch \d+\/\d+: loss /).allInnerTexts());
  await page.screenshot({ path: `${out}/run-page.png`, fullPage: true });
  const artifacts = await artifactsOf(runId);
  console.log('artifacts:', artifacts.map((a) => a.key).join(', '));
  for (const key of ['training-progress', 'training-chart', 'evaluation-chart']) {
    const artifact = artifacts.find((a) => a.key === key);
    if (!artifact) { failures.push(`no ${key} artifact`); continue; }
    await page.goto(`${base}/artifacts/artifact/${artifact.id}`, { waitUntil: 'networkidle', timeout: 60000 });
    await page.waitForTimeout(1500);
    await page.screenshot({ path: `${out}/${key}.png` });
    if (artifact.type === 'progress') {
      const shown = await page.getByText(/Progress: \d+%/).first().innerText().catch(() => '');
      console.log(`${key}: ${shown}`);
      if (shown !== 'Progress: 100%') failures.push(`${key}: shows "${shown}" after the run`);
    } else {
      const images = await page.$$eval('img[src^="data:image/png"]', (els) => els.map((e) => [e.naturalWidth, e.naturalHeight]));
      console.log(`${key}: PNG images decoded as`, images);
      if (!images.length || images.some(([w, h]) => !w || !h)) failures.push(`${key}: the PNG is not shown`);
    }
  }
}

(async () => {
  fs.mkdirSync(out, { recursive: true });
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
  const page = await browser.newPage({ viewport: { width: 1500, height: 1800 } });
  const { id: deploymentId } = await call(`/deployments/name/${deployment}`);
  const runId = await quickRunFromUi(page, deploymentId);
  console.log(`Quick run of ${deployment} from the UI: flow run ${runId}`);
  await whileTraining(page, runId);
  await whenDone(page, runId);
  await browser.close();
  if (failures.length) { console.error('FAILED: ' + failures.join('; ')); process.exit(1); }
  console.log(`OK; screenshots in ${out}`);
})().catch((e) => { console.error(String(e).slice(0, 800)); process.exit(1); });
