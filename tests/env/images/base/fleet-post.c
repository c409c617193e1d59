/* fleet-post SOCKET PATH [CONTENT-TYPE] < BODY
 * POSTs stdin to PATH over the Unix socket SOCKET (HTTP/1.1), prints the status line, exits 0
 * on 2xx. The test images' client for the agent's telemetry socket: busybox has no Unix-socket
 * HTTP client. Built static by build.sh. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: fleet-post SOCKET PATH [CONTENT-TYPE] < BODY\n");
    return 2;
  }
  const char *type = argc > 3 ? argv[3] : "text/plain";
  static char body[1 << 20];
  size_t len = fread(body, 1, sizeof body, stdin);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
  if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    perror("fleet-post: connect");
    return 1;
  }
  char head[512];
  int n = snprintf(head, sizeof head,
                   "POST %s HTTP/1.1\r\nHost: agent\r\nContent-Type: %s\r\nContent-Length: %zu\r\n\r\n",
                   argv[2], type, len);
  if (write(fd, head, n) != n || write(fd, body, len) != (ssize_t)len) {
    perror("fleet-post: write");
    return 1;
  }
  char answer[4096];
  ssize_t got = read(fd, answer, sizeof answer - 1);
  if (got <= 0) {
    fprintf(stderr, "fleet-post: no answer\n");
    return 1;
  }
  answer[got] = 0;
  char *eol = strstr(answer, "\r\n");
  if (eol) *eol = 0;
  puts(answer);
  return strncmp(answer + 9, "2", 1) == 0 ? 0 : 1;
}
