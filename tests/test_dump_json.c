/* SPDX-License-Identifier: MIT */

/*
 * ctx_dump_json: the subtree under a context as JSON, with tracking off.
 * Checks the nodes listed (cancellable ones, depth first, with parents),
 * deadlines, a cancelled node's cause and site, escaping of hostile text,
 * and that Python's json module reads the output.
 */
#include "check.h"

#include <stdlib.h>
#include <string.h>

static char *dump(ctx_t *c)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    CHECK(f != NULL);
    CHECK_EQ_INT(ctx_dump_json(c, f), 0);
    fclose(f);
    return text;
}

static size_t count(const char *s, const char *what)
{
    size_t n = 0;
    for (const char *p = s; (p = strstr(p, what)) != NULL; p += strlen(what))
        n++;
    return n;
}

/* Python's json module must read text, when /usr/bin/python3 is there. */
static void check_python_reads(const char *text)
{
    if (access("/usr/bin/python3", X_OK) != 0)
        return;
    char path[] = "/tmp/test_dump_json.XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); "
             "assert isinstance(d, list) and d' %s",
             path);
    int rc = system(cmd);
    unlink(path);
    CHECK_MSG(rc == 0, "python3 could not read: %s", text);
}

static const ctx_key_t key = { .name = "k\"ey\n" };

int main(void)
{
    ctx_cancel_t *cancel_a, *cancel_b;
    ctx_t *root = ctx_with_cancel(ctx_background(), &cancel_a);
    ctx_t *v = ctx_with_value(root, &key, "x", NULL);
    ctx_t *t = ctx_with_timeout(v, 5 * CTX_SECOND, NULL);
    ctx_t *b = ctx_with_cancel(t, &cancel_b);
    ctx_t *side = ctx_with_cancel(root, NULL);
    CHECK(root && v && t && b && side);

    char *text = dump(root);
    /* root, the deadline (through the value), b, side: four nodes. */
    CHECK_EQ_INT(count(text, "\"id\":"), 4);
    CHECK(text[0] == '[' && text[strlen(text) - 2] == ']');
    CHECK(strstr(text, "\"depth\":0,\"kind\":\"cancel\"") != NULL);
    CHECK(strstr(text, "\"depth\":1,\"kind\":\"deadline\"") != NULL);
    CHECK(strstr(text, "\"depth\":2,\"kind\":\"cancel\"") != NULL);
    CHECK(strstr(text, "\"parent\":null") != NULL);
    CHECK(strstr(text, "\"own_deadline\":true") != NULL);
    CHECK(strstr(text, "\"own_deadline\":false") != NULL);
    double left = strtod(strstr(text, "\"deadline_left_ms\":") + 19, NULL);
    CHECK(left > 4000 && left <= 5000);
    /* The value's key name, with a quote and a newline, shows escaped. */
    CHECK(strstr(text, "k\\\"ey\\u000a") != NULL);
    CHECK_EQ_INT(count(text, "\"done\":false"), 4);
    check_python_reads(text);
    free(text);

    /* A cancel with a cause and a site.  A cancelled context leaves its
     * parent's list (as in Go), so it is seen by dumping it. */
    ctx_cancel_cause(cancel_b, ECONNRESET, "client went \"away\"");
    text = dump(root);
    CHECK_EQ_INT(count(text, "\"id\":"), 3);
    free(text);
    text = dump(b);
    CHECK_EQ_INT(count(text, "\"done\":true"), 1);
    CHECK(strstr(text, "\"cause\":104,\"cause_msg\":\"client went \\\"away\\\"\"") != NULL);
    CHECK(strstr(text, "\"cancel_site\":{\"file\":") != NULL);
    CHECK(strstr(text, "test_dump_json.c") != NULL);
    CHECK(strstr(text, "\"func\":\"main\"") != NULL);
    check_python_reads(text);
    free(text);

    /* A subtree: t alone, b having ended. */
    text = dump(t);
    CHECK_EQ_INT(count(text, "\"id\":"), 1);
    free(text);

    CHECK_EQ_INT(ctx_dump_json(NULL, stdout), EINVAL);
    CHECK_EQ_INT(ctx_dump_json(root, NULL), EINVAL);

    ctx_cancel(cancel_a);
    ctx_unref(side);
    ctx_unref(b);
    ctx_unref(t);
    ctx_unref(v);
    ctx_unref(root);
    printf("test_dump_json: ok\n");
    return 0;
}
