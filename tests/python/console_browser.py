"""Drives the console in a real browser (Debian's Chromium over WebDriver, with selenium),
as an operator and a customer would, and prints what each saw as one JSON object.

Usage: console_browser.py BASE_URL OPERATOR_EMAIL OPERATOR_PASSWORD OTHER_KEY_ID
       OTHER_ACCOUNT_ID SCREENSHOT_DIR
The Rust test (tests/it/console.rs) checks the answers against the ledger.
"""

import json
import os
import sys
import tempfile
import time

import httpx
from openai import OpenAI
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

base, op_email, op_password, other_key, other_account, shots = sys.argv[1:7]
os.makedirs(shots, exist_ok=True)
XSS = "<img src=x onerror=alert(1)>"
CUSTOMER = ("owner@infini.test", "a customer's password")
out = {}


def browser(width=1280):
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tempfile.mkdtemp(prefix='tollgate-chromium-')}",
        f"--window-size={width},1000",
        "--lang=en-US",
    ]:
        options.add_argument(arg)
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.implicitly_wait(0)
    return driver


def click(driver, element):
    """Clicks `element` (a submit button or a link) and waits for the next page."""
    page = driver.find_element(By.TAG_NAME, "html")
    element.click()

    def replaced(_):
        try:
            page.is_enabled()
            return False
        except WebDriverException:  # stale, or "does not belong to the document"
            return True

    WebDriverWait(driver, 10).until(replaced)


def alert_opened(driver):
    try:
        driver.switch_to.alert
        return True
    except NoAlertPresentException:
        return False


def text(driver, css):
    return driver.find_element(By.CSS_SELECTOR, css).text


def fill(driver, fields):
    for name, value in fields.items():
        element = driver.find_element(By.ID, name)
        if element.tag_name == "select":
            element.find_element(By.CSS_SELECTOR, f"option[value='{value}']").click()
        else:
            element.clear()
            element.send_keys(value)


def open_panel(driver):
    for summary in driver.find_elements(By.CSS_SELECTOR, "details.panel > summary"):
        if summary.find_element(By.XPATH, "..").get_attribute("open") is None:
            summary.click()


def sign_in(driver, email, password):
    driver.get(base + "/console/")
    fill(driver, {"email": email, "password": password})
    click(driver, driver.find_element(By.ID, "sign-in"))


def shot(driver, name):
    driver.save_screenshot(os.path.join(shots, name + ".png"))


# The operator: signs in, opens an account whose display name is markup, credits it,
# adds the customer's login and issues the customer a key.
op = browser()
sign_in(op, op_email, op_password)
out["operator_landed"] = text(op, "h1")
shot(op, "overview-en-light")
op.get(base + "/console/accounts")
open_panel(op)
fill(
    op,
    {
        "account-name": "infini",
        "account-display": XSS,
        "account-mode": "prepaid",
        "account-zone": "Asia/Shanghai",
    },
)
click(op, op.find_element(By.ID, "open-account"))
out["account_alert"] = alert_opened(op)
out["accounts_table"] = text(op, "#accounts")
infini_id = op.find_element(By.LINK_TEXT, "infini").get_attribute("href").split("=")[-1]
out["infini_id"] = int(infini_id)
amount = op.find_element(By.ID, f"topup-{infini_id}")
amount.send_keys("100.00")
click(op, amount.find_element(By.XPATH, "following-sibling::button"))
out["accounts_after_topup"] = text(op, "#accounts")
op.get(base + "/console/people")
open_panel(op)
fill(
    op,
    {
        "person-email": CUSTOMER[0],
        "person-password": CUSTOMER[1],
        "person-role": "owner",
        "person-account": "infini",
    },
)
click(op, op.find_element(By.ID, "add-person"))
out["people_table"] = text(op, "#people")
op.get(base + "/console/keys")
open_panel(op)
fill(op, {"key-account": "infini", "key-name": XSS, "key-rpm": "60"})
click(op, op.find_element(By.ID, "issue-key"))
secret = op.find_element(By.ID, "new-secret").get_attribute("value")
out["secret_prefix"] = secret[:11]
out["key_alert"] = alert_opened(op)
out["copy_button"] = op.find_element(By.CSS_SELECTOR, "button.copy").text
shot(op, "keys-en-light")
op.get(base + "/console/keys")
out["secret_shown_again"] = secret in op.page_source
out["keys_table"] = text(op, "#keys")

# A form without its CSRF token is refused.
open_panel(op)
op.execute_script(
    "document.querySelector(\"form[action='/console/keys'] input[name=csrf]\").remove()"
)
fill(op, {"key-account": "infini", "key-name": "forged"})
click(op, op.find_element(By.ID, "issue-key"))
out["csrf_missing"] = text(op, "h1")

# The customer, in a second browser: calls the gateway with the key through the OpenAI
# SDK, then sees the request on the overview within seconds.
cu = browser(width=390)
sign_in(cu, *CUSTOMER)
out["customer_landed"] = text(cu, "h1")
sdk = OpenAI(base_url=base + "/v1/", api_key=secret, max_retries=0)
raw = sdk.chat.completions.with_raw_response.create(
    model="megrez-7b-instruct",
    messages=[{"role": "user", "content": "你是谁"}],
    extra_body={"x_sim": {"prompt_tokens": 22, "completion_tokens": 18}},
)
out["request_id"] = raw.headers["x-request-id"]
deadline = time.time() + 10
while True:
    cu.get(base + "/console/")
    cards = {
        c.find_element(By.CSS_SELECTOR, ".label").text: c.find_element(
            By.CSS_SELECTOR, ".figure"
        ).text
        for c in cu.find_elements(By.CSS_SELECTOR, ".card")
    }
    if cards.get("Requests") == "1" or time.time() > deadline:
        break
    time.sleep(0.5)
out["customer_cards"] = cards
out["customer_by_pair"] = text(cu, "table")
out["customer_topups"] = text(cu, "#topups")
shot(cu, "overview-en-light-360")
cu.get(base + "/console/keys")
out["customer_keys"] = text(cu, "#keys")

# The usage explorer lists the request; its page shows how the cost is computed; the CSV
# export is exactly the records shown (fetched with the browser's session cookie).
cu.get(base + "/console/usage")
out["usage_records"] = text(cu, "#records")
out["usage_total"] = text(cu, "#total")
shot(cu, "usage-en-light-360")
click(cu, cu.find_element(By.LINK_TEXT, out["request_id"]))
out["arithmetic_sum"] = text(cu, "#sum")
out["arithmetic_recorded"] = text(cu, "#recorded")
out["arithmetic"] = text(cu, "#arithmetic")
cu.get(base + "/console/usage")
export = cu.find_element(By.ID, "export").get_attribute("href")
cookies = {c["name"]: c["value"] for c in cu.get_cookies()}
out["csv"] = httpx.get(export, cookies=cookies).text
out["csv_signed_out"] = httpx.get(export).status_code
cu.get(base + "/console/invoices")
out["invoice_total"] = text(cu, "#invoice-total")
out["invoice_status"] = text(cu, "#invoice-status")
out["invoice_lines"] = text(cu, "#invoice-lines")
invoice_json = cu.find_element(By.ID, "download-json").get_attribute("href")
out["invoice_json"] = httpx.get(invoice_json, cookies=cookies).json()

# Another account's key, and its overview, are not there for the customer.
cu.get(base + f"/console/keys/{other_key}")
out["other_key"] = text(cu, "h1")
cu.get(base + f"/console/?account={other_account}")
out["other_account"] = text(cu, "h1")
cu.get(base + "/console/audit")
out["customer_audit"] = text(cu, "h1")

# Chinese, then dark: the switches change the page and are remembered.
cu.get(base + "/console/")
click(cu, cu.find_element(By.LINK_TEXT, "中文"))
out["zh_nav"] = text(cu, "nav")
out["zh_lang"] = cu.find_element(By.TAG_NAME, "html").get_attribute("lang")
background = cu.execute_script("return getComputedStyle(document.body).backgroundColor")
click(cu, cu.find_element(By.LINK_TEXT, "深色"))
out["theme"] = cu.find_element(By.TAG_NAME, "html").get_attribute("data-theme")
out["backgrounds"] = [
    background,
    cu.execute_script("return getComputedStyle(document.body).backgroundColor"),
]
cu.get(base + "/console/keys")
out["zh_keys_heading"] = text(cu, "h1")
cu.set_window_size(1280, 1000)
cu.get(base + "/console/")
shot(cu, "overview-zh-dark")

# The operator's audit log names each change and who made it.
op.get(base + "/console/audit")
out["audit"] = text(op, "#audit")
shot(op, "audit-en-light")

# Ten wrong passwords for the customer: the eleventh try is refused even when right.
th = browser()
for _ in range(10):
    sign_in(th, CUSTOMER[0], "not the password at all")
out["tenth_wrong"] = text(th, "#sign-in-error")
sign_in(th, *CUSTOMER)
out["throttled"] = text(th, "#sign-in-error")

for driver in (op, cu, th):
    driver.quit()
print(json.dumps(out, ensure_ascii=False))
