/*
 * patchd - the inference server. At this stage it loads the backbone and answers GET /healthz;
 * the task endpoints are built on top of this in server/ as they land.
 */
#include "../core/pd.h"
#include "../core/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] = "usage: patchd [--listen ADDR:PORT] [--model FILE]\n"
                            "\n"
                            "  --listen ADDR:PORT  address to serve on (default 127.0.0.1:8080)\n"
                            "  --model FILE        backbone (default "
                            "models/ssd_mobilenet_v1.safetensors)\n"
                            "  --version, --help\n";

struct server {
    pd_model *backbone;
};

static enum MHD_Result reply_json(struct MHD_Connection *c, unsigned status, const char *body)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "application/json");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **req)
{
    (void)cls;
    (void)version;
    (void)upload;
    (void)req;
    if (*upload_size) {
        *upload_size = 0; /* nothing here takes a body: drop it */
        return MHD_YES;
    }
    if (!strcmp(url, "/healthz")) {
        if (strcmp(method, "GET") && strcmp(method, "HEAD"))
            return reply_json(c, MHD_HTTP_METHOD_NOT_ALLOWED,
                              "{\"error\":{\"code\":\"method_not_allowed\",\"message\":\"use GET "
                              "/healthz\"}}\n");
        return reply_json(c, MHD_HTTP_OK, "{\"status\":\"ok\"}\n");
    }
    return reply_json(c, MHD_HTTP_NOT_FOUND,
                      "{\"error\":{\"code\":\"not_found\",\"message\":\"no such endpoint\"}}\n");
}

static int parse_listen(const char *s, struct sockaddr_in *sa)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof(host))
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535 || end == colon + 1)
        return -1;
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host[0] ? host : "0.0.0.0", &sa->sin_addr) != 1)
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    const char *listen = "127.0.0.1:8080";
    const char *model = "models/ssd_mobilenet_v1.safetensors";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--listen") && i + 1 < argc) {
            listen = argv[++i];
        } else if (!strcmp(argv[i], "--model") && i + 1 < argc) {
            model = argv[++i];
        } else if (!strcmp(argv[i], "--version")) {
            printf("patchd %s\n", PD_VERSION);
            return 0;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage, stdout);
            return 0;
        } else {
            fprintf(stderr, "patchd: unexpected argument '%s'\n%s", argv[i], usage);
            return 2;
        }
    }
    struct sockaddr_in sa;
    if (parse_listen(listen, &sa) < 0) {
        fprintf(stderr, "patchd: --listen '%s' is not IPV4:PORT\n", listen);
        return 2;
    }

    struct server srv = {0};
    char msg[PD_MSG_MAX];
    int err = pd_model_load(model, &srv.backbone, msg);
    if (err) {
        fprintf(stderr, "patchd: cannot load the backbone: %s\n", msg);
        return 1;
    }

    /* signals are taken synchronously by the main thread */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct MHD_Daemon *d =
        MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0,
                         NULL, NULL, on_request, &srv, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "patchd: cannot listen on %s: %s\n", listen, strerror(errno));
        pd_model_free(srv.backbone);
        return 1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    fprintf(stderr, "patchd: listening on %s (port %u)\n", listen, info ? info->port : 0);

    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "patchd: signal %d, shutting down\n", sig);
    MHD_stop_daemon(d);
    pd_model_free(srv.backbone);
    return 0;
}
