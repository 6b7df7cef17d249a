// Uses the Streamlit app in headless Chromium as a new user would: registers,
// starts two chats, comes back to the first one, sends a message and watches
// the reply grow on the page as it streams, then saves a screenshot.
// Run through scripts/screenshot-ui.sh (which starts a slow streaming model).
const { chromium } = require('playwright-core');

const [url, email, password, out] = process.argv.slice(2);

async function send(page, text) {
  const input = page.getByPlaceholder('Message chatgate');
  await input.fill(text);
  await input.press('Enter');
  const reply = `You said: ${text}`;
  const seen = new Set();
  const last = page.locator('[data-testid="stChatMessage"]').last()
    .locator('[data-testid="stMarkdownContainer"]').last();
  for (let i = 0; i < 400; i++) {
    const shown = (await last.innerText({ timeout: 100 }).catch(() => '')).trim();
    if (reply.startsWith(shown) && shown.length > 0) seen.add(shown);
    if (shown === reply && (await page.getByText(reply).count()) > 0) break;
    await page.waitForTimeout(20);
  }
  await page.getByText(reply).first().waitFor();
  return seen.size;
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  globalThis.failShot = () => page.screenshot({ path: `${out}.failed.png` });
  await page.goto(url, { waitUntil: 'networkidle' });
  await page.getByRole('tab', { name: 'Register' }).click();
  // The hidden Log in tab's fields are not in the accessibility tree: one Email box.
  await page.getByRole('textbox', { name: 'Display name (optional)' }).fill('Grace');
  await page.getByRole('textbox', { name: 'Email' }).first().fill(email);
  await page.getByRole('textbox', { name: 'Password (8 characters or more)' }).fill(password);
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.getByText('No chats yet').waitFor();
  console.log('registered and logged in');

  await send(page, 'Plan three days in Lisbon for two.');
  await page.getByRole('button', { name: '+ New chat' }).click();
  await page.getByRole('heading', { name: 'New chat' }).waitFor();
  await send(page, 'Ideas for a surprise birthday party?');
  console.log('started two chats');

  await page.getByRole('button', { name: 'Plan three days in Lisbon for two.' }).click();
  await page.getByText('You said: Plan three days in Lisbon for two.').waitFor();
  console.log('came back to the first chat: its history is there');
  const states = await send(page, 'And where should we eat on the second evening?');
  console.log(`the reply grew on the page through ${states} states as it streamed`);
  await page.waitForTimeout(500);  // let the page settle after the rerun
  await page.screenshot({ path: out });
  console.log(`saved ${out}`);
  await browser.close();
  process.exit(states >= 3 ? 0 : 1);
})().catch(async (err) => {
  console.error(err);
  if (globalThis.failShot) await globalThis.failShot().catch(() => {});
  process.exit(1);
});
