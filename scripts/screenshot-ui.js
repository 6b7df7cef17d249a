// Uses the Streamlit app in headless Chromium as a person would: logs in, opens
// an earlier chat, sends a message, waits for the streamed reply, and saves a
// screenshot. Run through scripts/screenshot-ui.sh.
const { chromium } = require('playwright-core');

const [url, email, password, out] = process.argv.slice(2);

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  await page.goto(url, { waitUntil: 'networkidle' });
  await page.getByRole('textbox', { name: 'Email' }).first().fill(email);
  await page.getByRole('textbox', { name: 'Password' }).first().fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('button', { name: 'Trip to Lisbon' }).click();
  await page.getByText('Echo: Plan three days in Lisbon').waitFor();
  const input = page.getByPlaceholder('Message chatgate');
  await input.fill('And where should we eat on the second evening?');
  await input.press('Enter');
  await page.getByText('Echo: And where should we eat on the second evening?').waitFor();
  await page.waitForTimeout(500);  // let the page settle after the rerun
  await page.screenshot({ path: out });
  console.log(`saved ${out}`);
  await browser.close();
})().catch((err) => { console.error(err); process.exit(1); });
