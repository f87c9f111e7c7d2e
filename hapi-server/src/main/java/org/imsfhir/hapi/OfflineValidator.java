package org.imsfhir.hapi;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationResult;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.zip.GZIPInputStream;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.UnknownCodeSystemWarningValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;

/**
 * {@code ims-fhir validate}: validates FHIR resources offline with the same HAPI validator, IG
 * package and terminology rules as the test server (no server, no database, no network).
 *
 * <p>Usage: {@code OfflineValidator --ig PACKAGE.tgz FILE...}; a FILE is NDJSON (one resource a
 * line, optionally .gz), one JSON resource, or a Bundle (each entry's resource is validated).
 * Prints one JSON line per resource on stdout: {@code {"file", "line", "resource", "issues":
 * [{"severity", "code", "diagnostics", "expression"}]}} (the issues of its OperationOutcome).
 * Exit status 0 when no resource has an error, 1 when one does, 2 on a usage or read error.
 */
public final class OfflineValidator {

	private OfflineValidator() {}

	public static void main(String[] args) {
		System.exit(run(args, System.out, System.err));
	}

	static int run(String[] args, PrintStream out, PrintStream err) {
		Path ig = null;
		List<Path> files = new ArrayList<>();
		for (int i = 0; i < args.length; i++) {
			if (args[i].equals("--ig") && i + 1 < args.length) {
				ig = Path.of(args[++i]);
			} else {
				files.add(Path.of(args[i]));
			}
		}
		if (files.isEmpty()) {
			err.println("usage: OfflineValidator [--ig PACKAGE.tgz] FILE...");
			return 2;
		}
		FhirContext ctx = FhirContext.forR4();
		ValidationSupportChain chain;
		try {
			chain = new ValidationSupportChain(
					new DefaultProfileValidationSupport(ctx),
					new OfflineTerminologyWarnings(ctx),
					new CommonCodeSystemsTerminologyService(ctx),
					new InMemoryTerminologyServerValidationSupport(ctx),
					new SnapshotGeneratingValidationSupport(ctx));
			UnknownCodeSystemWarningValidationSupport unknown = new UnknownCodeSystemWarningValidationSupport(ctx);
			unknown.setNonExistentCodeSystemSeverity(ca.uhn.fhir.context.support.IValidationSupport.IssueSeverity.ERROR);
			chain.addValidationSupport(unknown);
			if (ig != null) {
				chain.addValidationSupport(0, ImsIgValidationConfig.load(ctx, ig));
			}
		} catch (IOException | RuntimeException e) {
			err.println("cannot read the IG package " + ig + ": " + e.getMessage());
			return 2;
		}
		FhirValidator validator = ctx.newValidator();
		validator.registerValidatorModule(new FhirInstanceValidator(chain));
		validator.setInterceptorBroadcaster(ImsIgValidationConfig.unknownCodeSystemsAreErrors());
		ObjectMapper json = new ObjectMapper();
		boolean errors = false;
		for (Path file : files) {
			try {
				for (Item item : read(json, file)) {
					errors |= report(json, validator, file, item, out);
				}
			} catch (IOException | RuntimeException e) {
				err.println(file + ": cannot read: " + e.getMessage());
				return 2;
			}
		}
		out.flush();
		return errors ? 1 : 0;
	}

	private record Item(int line, JsonNode resource) {}

	private static List<Item> read(ObjectMapper json, Path file) throws IOException {
		List<Item> items = new ArrayList<>();
		String name = file.getFileName().toString();
		if (name.endsWith(".ndjson") || name.endsWith(".ndjson.gz")) {
			var raw = Files.newInputStream(file);
			var in = name.endsWith(".gz") ? new GZIPInputStream(raw) : raw;
			try (BufferedReader reader = new BufferedReader(new InputStreamReader(in, StandardCharsets.UTF_8))) {
				String line;
				int n = 0;
				while ((line = reader.readLine()) != null) {
					n++;
					if (!line.isBlank()) {
						items.add(new Item(n, json.readTree(line)));
					}
				}
			}
			return items;
		}
		JsonNode doc = json.readTree(file.toFile());
		if ("Bundle".equals(doc.path("resourceType").asText()) && doc.has("entry")) {
			for (JsonNode entry : doc.get("entry")) {
				if (entry.has("resource")) {
					items.add(new Item(0, entry.get("resource")));
				}
			}
		} else {
			items.add(new Item(0, doc));
		}
		return items;
	}

	private static boolean report(ObjectMapper json, FhirValidator validator, Path file, Item item, PrintStream out)
			throws IOException {
		ValidationResult result = validator.validateWithResult(json.writeValueAsString(item.resource()));
		ObjectNode line = json.createObjectNode();
		line.put("file", file.toString());
		line.put("line", item.line());
		JsonNode res = item.resource();
		line.put("resource", res.path("resourceType").asText("?") + "/" + res.path("id").asText(""));
		ArrayNode issues = line.putArray("issues");
		boolean error = false;
		for (SingleValidationMessage m : result.getMessages()) {
			String severity = m.getSeverity().getCode();
			if (severity.equals("information")) {
				continue;
			}
			error |= severity.equals("error") || severity.equals("fatal");
			ObjectNode issue = issues.addObject();
			issue.put("severity", severity);
			issue.put("code", m.getMessageId() == null ? "processing" : m.getMessageId());
			issue.put("diagnostics", m.getMessage());
			issue.put("expression", m.getLocationString());
		}
		out.println(json.writeValueAsString(line));
		return error;
	}
}
