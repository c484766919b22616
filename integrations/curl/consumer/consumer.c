/* SPDX-License-Identifier: MIT */

/* Uses an installed libctx-curl: the propagation headers of a context with
 * a deadline, and a transfer under a context that is already cancelled,
 * which ends at once without touching the network. */
#include <ctx.h>
#include <ctx/curl.h>
#include <stdio.h>
#include <string.h>

int main(void)
{
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 5 * CTX_SECOND, NULL);
    struct curl_slist *h = ctx_curl_headers(ctx, NULL);
    int timeout_sent = h != NULL && strncmp(h->data, "grpc-timeout: ", 14) == 0;
    curl_slist_free_all(h);

    ctx_cancel_t *cancel;
    ctx_t *gone = ctx_with_cancel(ctx, &cancel);
    ctx_cancel(cancel);
    CURL *easy = curl_easy_init();
    curl_easy_setopt(easy, CURLOPT_URL, "http://127.0.0.1:9/");
    CURLcode rc = ctx_curl_perform(gone, easy);
    printf("libctx-curl consumer: grpc-timeout %s, cancelled transfer: %s\n",
           timeout_sent ? "sent" : "missing", curl_easy_strerror(rc));
    curl_easy_cleanup(easy);
    ctx_unref(gone);
    ctx_unref(ctx);
    return timeout_sent && rc == CURLE_ABORTED_BY_CALLBACK ? 0 : 1;
}
