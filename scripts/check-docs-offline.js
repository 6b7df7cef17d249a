// Drives /docs in headless Chromium with every non-loopback request blocked:
// Authorize (password flow) -> GET /chat/sessions -> prints the status code.
// Run through scripts/check-docs-offline.sh.
const { chromium } = require('playwright-core');

const [base, email, password] = process.argv.slice(2);
const op = '#operations-chat-list_sessions_chat_sessions_get';

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage();
  const external = [];
  const host = new URL(base).hostname;
  await page.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (url.hostname !== host) { external.push(url.href); return route.abort(); }
    return route.continue();
  });
  await page.goto(`${base}/docs`, { waitUntil: 'networkidle' });
  await page.click('button.authorize');
  await page.fill('#oauth_username', email);
  await page.fill('#oauth_password', password);
  await page.click('.auth-btn-wrapper button.authorize');
  await page.waitForSelector('text=Logout');
  await page.click('button.btn-done');
  await page.click(`${op} .opblock-summary`);
  await page.click(`${op} button.try-out__btn`);
  await page.click(`${op} button.execute`);
  const cell = `${op} .live-responses-table tbody .response-col_status`;
  await page.waitForSelector(cell);
  const status = (await page.textContent(cell)).trim();
  console.log(`GET /chat/sessions after Authorize: ${status}`);
  console.log(`requests to other hosts: ${external.length ? external.join(', ') : 'none'}`);
  await browser.close();
  process.exit(status === '200' && external.length === 0 ? 0 : 1);
})().catch((err) => { console.error(err); process.exit(1); });
